-- GET /profile/<prefix><i> for random i in [0, count): reads of preloaded profiles.
-- Usage: wrk ... -s reads.lua <url> -- <prefix> <count>
dofile(string.match(debug.getinfo(1, 'S').source, '^@(.*/)') .. 'report.lua')

local prefix, count
function init(args)
  prefix, count = args[1], tonumber(args[2])
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  return wrk.format('GET', '/profile/' .. prefix .. math.random(0, count - 1))
end
