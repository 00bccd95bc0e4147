-- Creates only: every request makes a new user named after this run and thread (so each answers 201).
-- Usage: wrk ... -s creates.lua <url> -- <prefix> <count> <run-id>
dofile(string.match(debug.getinfo(1, 'S').source, '^@(.*/)') .. 'report.lua')

local run
local made = 0
local json = { ['Content-Type'] = 'application/json' }
function init(args)
  run = args[3]
end

function request()
  made = made + 1
  local user = run .. '-' .. (tid or 0) .. '-' .. made
  return wrk.format('POST', '/profile/' .. user, json, '{"email": "' .. user .. '@example.com", "username": "' .. user .. '"}')
end
