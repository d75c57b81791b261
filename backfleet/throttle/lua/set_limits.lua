-- ARGV: burst, rpm or '', tpm or '' -> 'ok' | 'incomplete'
local now = clock()
local s = read_state()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
local raw = redis.call('HMGET', CFG, 'rpm', 'tpm')
local rpm = ARGV[2] ~= '' and ARGV[2] or raw[1]
local tpm = ARGV[3] ~= '' and ARGV[3] or raw[2]
if not tonumber(rpm) or not tonumber(tpm) then return 'incomplete' end
redis.call('HSET', CFG, 'rpm', rpm, 'tpm', tpm)
redis.call('HSETNX', CFG, 'paused', '0')
cfg = read_config()
refill(s, rates(cfg, s), now)
save(s)
return 'ok'
