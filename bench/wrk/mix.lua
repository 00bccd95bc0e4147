-- The mix: 10% creates, 80% reads, 5% updates, 5% deletes, all through the REST paths.
-- Reads and updates hit preloaded profiles; creates make new users named after this run,
-- and deletes remove users this thread has seen created (parsed from the 201 body), so a
-- correct server answers every request with 2xx.
-- Usage: wrk ... -s mix.lua <url> -- <prefix> <count> <run-id>
dofile(string.match(debug.getinfo(1, 'S').source, '^@(.*/)') .. 'report.lua')

local prefix, count, run
local made, created = 0, {}
local json = { ['Content-Type'] = 'application/json' }
function init(args)
  prefix, count, run = args[1], tonumber(args[2]), args[3]
  math.randomseed(os.time() * 1000 + (tid or 0))
end

local function preloaded()
  return '/profile/' .. prefix .. math.random(0, count - 1)
end

function request()
  local dice = math.random(100)
  if dice <= 10 then
    made = made + 1
    local user = run .. '-' .. (tid or 0) .. '-' .. made
    return wrk.format('POST', '/profile/' .. user, json, '{"email": "' .. user .. '@example.com", "username": "' .. user .. '"}')
  elseif dice <= 90 or (dice > 95 and #created == 0) then
    return wrk.format('GET', preloaded())
  elseif dice <= 95 then
    return wrk.format('PATCH', preloaded(), json, '{"username": "updated"}')
  end
  return wrk.format('DELETE', '/profile/' .. table.remove(created))
end

function response(status, headers, body)
  if status == 201 then
    local user = string.match(body, 'Profile created for: ([^"]+)')
    if user then
      created[#created + 1] = user
    end
  end
end
