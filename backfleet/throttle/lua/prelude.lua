-- Shared by every script (prepended at load). KEYS[1] = K:config, KEYS[2] = K:state,
-- ARGV[1] = burst seconds, then each script's own, then (added by FleetThrottle._run)
-- recovery seconds, recovery interval, floor, clock; numbers cross as strings because Redis
-- truncates Lua numbers to integers. The state TTL placeholder (in save) is filled in at load.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local CFG, ST = KEYS[1], KEYS[2]
local BURST = tonumber(ARGV[1])
local NUMS = {'req', 'tok', 'ts', 'factor', 'cool_until', 'prov_rpm', 'prov_tpm',
              'last_dec', 'last_inc'}

-- the last four ARGV of every script: the recovery policy (seconds from the floor to 1.0, the
-- least step interval, the floor) and the caller's clock ('' = Redis TIME; tests inject one)
local NOW = tonumber(ARGV[#ARGV])
local RECOVERY, RINTERVAL = tonumber(ARGV[#ARGV - 3]), tonumber(ARGV[#ARGV - 2])
local FLOOR = tonumber(ARGV[#ARGV - 1])
local function clock()
  if NOW then return NOW end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x) return string.format('%.17g', x) end

local function read_config()
  local c = redis.call('HMGET', CFG, 'rpm', 'tpm', 'paused')
  if not c[1] or not c[2] then return nil, 'unconfigured' end
  local rpm, tpm = tonumber(c[1]), tonumber(c[2])
  if not rpm or not tpm or rpm <= 0 or tpm <= 0 then return nil, 'badconfig' end
  return {rpm = rpm, tpm = tpm, paused = (c[3] == '1')}
end

local function read_state()
  local v = redis.call('HMGET', ST, 'hol_id', 'hol_until', 'hol_tok', 'hol_since', unpack(NUMS))
  local s = {hol_id = v[1] or nil, hol_until = tonumber(v[2]) or 0, hol_tok = tonumber(v[3]) or 0,
             hol_since = tonumber(v[4]) or 0}
  for i, name in ipairs(NUMS) do s[name] = tonumber(v[i + 4]) end
  s.factor = math.max(0.001, math.min(1, s.factor or 1))
  s.cool_until = s.cool_until or 0
  s.last_dec = s.last_dec or 0
  s.last_inc = s.last_inc or 0
  return s
end

local function rates(cfg, s)
  local rpm, tpm = cfg.rpm, cfg.tpm
  if s.prov_rpm and s.prov_rpm > 0 and s.prov_rpm < rpm then rpm = s.prov_rpm end
  if s.prov_tpm and s.prov_tpm > 0 and s.prov_tpm < tpm then tpm = s.prov_tpm end
  local r = {rpm = rpm * s.factor, tpm = tpm * s.factor}
  r.req_rate, r.tok_rate = r.rpm / 60, r.tpm / 60
  r.req_cap = math.max(1, r.req_rate * BURST)
  r.tok_cap = math.max(1, r.tok_rate * BURST)
  return r
end

-- after the cool-down the factor climbs linearly in time (aimd_recover in Python)
local function climb(s, now)
  if s.factor >= 1 or now < s.cool_until then return false end
  local since = math.max(s.last_inc, s.cool_until, s.last_dec)
  if now - since < RINTERVAL then return false end
  s.factor = math.min(1, s.factor + (1 - FLOOR) * (now - since) / RECOVERY)
  s.last_inc = now
  return true
end

local function refill(s, r, now)
  if s.ts == nil then s.ts = now end
  if s.req == nil then s.req = r.req_cap end
  if s.tok == nil then s.tok = r.tok_cap end
  if now > s.ts then
    s.req = s.req + r.req_rate * (now - s.ts)
    s.tok = s.tok + r.tok_rate * (now - s.ts)
    s.ts = now
  end
  s.req = math.min(r.req_cap, s.req)
  s.tok = math.min(r.tok_cap, s.tok)
end

local function save(s)
  local args = {}
  for _, name in ipairs(NUMS) do
    if s[name] ~= nil then
      args[#args + 1] = name
      args[#args + 1] = fmt(s[name])
    end
  end
  if s.hol_id then
    local hol = {'hol_id', s.hol_id, 'hol_until', fmt(s.hol_until),
                 'hol_tok', fmt(s.hol_tok), 'hol_since', fmt(s.hol_since)}
    for _, item in ipairs(hol) do args[#args + 1] = item end
  else
    redis.call('HDEL', ST, 'hol_id', 'hol_until', 'hol_tok', 'hol_since')
  end
  if #args > 0 then redis.call('HSET', ST, unpack(args)) end
  redis.call('EXPIRE', ST, __STATE_TTL_SECONDS__)
end
