-- flotilla-crdb: commit one Active-Active change atomically (see script.rs for the layout).
-- KEYS[1] op log, KEYS[2] op sequence, KEYS[3] positions, KEYS[4] settings, then per key:
-- metadata, key.
local nkeys = tonumber(ARGV[4])
for k = 1, nkeys do
  local v = redis.call('HGET', KEYS[3 + 2 * k], 'v')
  if not v then v = '' end
  if v ~= ARGV[4 + k] then
    return {0, k}
  end
end
local i = 5 + nkeys
local function commands(count, execute)
  for _ = 1, count do
    local nargs = tonumber(ARGV[i])
    if execute then
      local args = {}
      for a = 1, nargs do
        args[a] = ARGV[i + a]
      end
      redis.call(unpack(args))
    end
    i = i + 1 + nargs
  end
end
for k = 1, nkeys do
  local meta, key = KEYS[3 + 2 * k], KEYS[4 + 2 * k]
  local state = ARGV[i]
  local exists = redis.call('EXISTS', key) == 1
  local na = tonumber(ARGV[i + 1])
  i = i + 2
  local a_at = i
  commands(na, exists)
  local nb = tonumber(ARGV[i])
  i = i + 1
  if nb < 0 then
    if not exists then
      local after = i
      i = a_at
      commands(na, true)
      i = after
    end
  else
    commands(nb, not exists)
  end
  redis.call('HSET', meta, 'v', (tonumber(ARGV[4 + k]) or 0) + 1, 's', state)
  if ARGV[4 + k] == '' then
    redis.call('HINCRBY', KEYS[4], 'metas', 1)
  end
end
local backlog = redis.call('HGET', KEYS[4], 'backlog') or ARGV[1]
local out = {1}
local nops = tonumber(ARGV[i])
i = i + 1
for _ = 1, nops do
  local n = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', backlog, n .. '-0',
    'd', ARGV[i], 'p', ARGV[i + 1], 'o', ARGV[i + 2])
  i = i + 3
  out[#out + 1] = n
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
return out
