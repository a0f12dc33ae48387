"""Lua scripts for the operations that must be atomic. Each touches keys of one slot only
(see keys.py); record keys a timer set names are in that set's slot by construction.

Records with an expiry are fields of a hash whose values start with "<deadline-ms> ...\\n"
(keys.frame). After every change, `settle` drops the hash's expired fields, sets the hash's
entry in its shard's timer set to the earliest remaining deadline (or removes it) and gives
the key a Redis TTL a little past the latest deadline, as a safety net only.
"""

from __future__ import annotations

_COMMON = """
local function words(value)
  local header = string.sub(value, 1, string.find(value, '\\n', 1, true) - 1)
  local out = {}
  for w in string.gmatch(header, '%S+') do out[#out + 1] = w end
  return out
end

local function deadline(value)
  return tonumber(string.match(value, '^(%d+)'))
end

-- Drop expired fields of `key`, re-arm its timer; returns how many fields were dropped.
local function settle(key, timers, now, grace)
  local all = redis.call('HGETALL', key)
  local dropped, first, last = 0, nil, nil
  for i = 1, #all, 2 do
    local d = deadline(all[i + 1])
    if d <= now then
      redis.call('HDEL', key, all[i])
      dropped = dropped + 1
    else
      if first == nil or d < first then first = d end
      if last == nil or d > last then last = d end
    end
  end
  if first == nil then
    redis.call('ZREM', timers, key)
  else
    redis.call('ZADD', timers, first, key)
    redis.call('PEXPIRE', key, last - now + grace)
  end
  return dropped
end
"""

# KEYS: record hash, its timer set. ARGV: now, grace, remove_all ("1"/"0"), then per contact
# six values: contact, call-id, cseq, instance-id, reg-id, framed binding ("" removes).
# RFC 3261 10.3: a change whose Call-ID equals the stored binding's and whose CSeq is not
# higher is skipped. RFC 5626: a binding with the same instance-id and reg-id is replaced.
# Returns the unexpired framed bindings afterwards.
APPLY_BINDINGS = (
    _COMMON
    + """
local key, timers = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', key) end
for i = 4, #ARGV, 6 do
  local contact, call_id, cseq = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local instance, reg_id, value = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local old = redis.call('HGET', key, contact)
  local stale = false
  if old and deadline(old) > now then
    local w = words(old)
    stale = w[4] == call_id and tonumber(w[2]) >= cseq
  end
  if not stale then
    if instance ~= '' then
      local all = redis.call('HGETALL', key)
      for j = 1, #all, 2 do
        local w = words(all[j + 1])
        if all[j] ~= contact and w[5] == instance and w[3] == reg_id then
          redis.call('HDEL', key, all[j])
        end
      end
    end
    if value == '' then
      redis.call('HDEL', key, contact)
    else
      redis.call('HSET', key, contact, value)
    end
  end
end
settle(key, timers, now, grace)
return redis.call('HVALS', key)
"""
)

# KEYS: record hash, its timer set. ARGV: now, grace, field, framed value, fields to delete...
PUT_RECORD = (
    _COMMON
    + """
local key, timers = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 5, #ARGV do redis.call('HDEL', key, ARGV[i]) end
redis.call('HSET', key, ARGV[3], ARGV[4])
settle(key, timers, now, grace)
return 1
"""
)

# KEYS: dialogs hash, its timer set. ARGV: now, grace, field, framed dialog, then the fields
# the same dialog may be stored under (rules.stored_dialog_candidates), in order.
# PutDialog in one round trip when the dialog is new: when none of those fields holds an
# unexpired dialog, writes the field (as PUT_RECORD) and returns 1; otherwise writes nothing
# and returns {field, value} of the first that does, for the caller to merge and PUT_RECORD.
PUT_NEW_DIALOG = (
    _COMMON
    + """
local key, timers = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 5, #ARGV do
  local old = redis.call('HGET', key, ARGV[i])
  if old and deadline(old) > now then return {ARGV[i], old} end
end
redis.call('HSET', key, ARGV[3], ARGV[4])
settle(key, timers, now, grace)
return 1
"""
)

# KEYS: dialogs hash, its timer set. ARGV: now, grace, candidate fields in order
# (rules.dialog_candidates). DeleteDialog with both tags in one round trip: deletes the first
# candidate holding an unexpired dialog and returns it (framed); 0 when there is none.
DELETE_DIALOG = (
    _COMMON
    + """
local key, timers = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  local old = redis.call('HGET', key, ARGV[i])
  if old and deadline(old) > now then
    redis.call('HDEL', key, ARGV[i])
    settle(key, timers, now, grace)
    return old
  end
end
return 0
"""
)

# KEYS: record hash, its timer set. ARGV: now, grace, fields... (none: every field).
# Returns how many unexpired records were deleted.
DELETE_RECORDS = (
    _COMMON
    + """
local key, timers = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields == 0 then fields = redis.call('HKEYS', key) end
local deleted = 0
for _, field in ipairs(fields) do
  local old = redis.call('HGET', key, field)
  if old then
    if deadline(old) > now then deleted = deleted + 1 end
    redis.call('HDEL', key, field)
  end
end
settle(key, timers, now, grace)
return deleted
"""
)

# KEYS: one shard's timer set. ARGV: now, grace, limit.
# Claims due entries (ZREM: only the instance that removed an entry fires it) and settles
# each record: fields whose deadline was moved forward by a refresh survive and re-arm the
# timer. Returns a flat list of record key, fields dropped.
SWEEP = (
    _COMMON
    + """
local timers = KEYS[1]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', timers, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, key in ipairs(due) do
  if redis.call('ZREM', timers, key) == 1 then
    out[#out + 1] = key
    out[#out + 1] = settle(key, timers, now, grace)
  end
end
return out
"""
)

# KEYS: nonce-count key. ARGV: nonce-count, TTL ms. 1 and stored if above the last one seen.
CHECK_NONCE_COUNT = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: subscriber hash, IMPI index. ARGV: impi, Subscriber bytes, IMPU key prefix, impus...
# Refuses an IMPU another IMPI owns: returns {'conflict', impu, owner}; else {'ok'}.
PUT_SUBSCRIBER = """
local sub, index, impi, prefix = KEYS[1], KEYS[2], ARGV[1], ARGV[3]
local new = {}
for i = 4, #ARGV do
  local owner = redis.call('GET', prefix .. ARGV[i])
  if owner and owner ~= impi then return {'conflict', ARGV[i], owner} end
  new[ARGV[i]] = true
end
local old = redis.call('HGET', sub, 'impus')
if old then
  for impu in string.gmatch(old, '[^\\n]+') do
    if not new[impu] then redis.call('DEL', prefix .. impu) end
  end
end
local impus = {}
for i = 4, #ARGV do
  redis.call('SET', prefix .. ARGV[i], impi)
  impus[#impus + 1] = ARGV[i]
end
redis.call('HSET', sub, 'pb', ARGV[2], 'impus', table.concat(impus, '\\n'))
redis.call('ZADD', index, 0, impi)
return {'ok'}
"""

# KEYS: IMPI index. ARGV: subscriber key prefix, IMPU key prefix, impi or "", impu.
# Returns the Subscriber bytes or false.
GET_SUBSCRIBER = """
local impi = ARGV[3]
if impi == '' then
  impi = redis.call('GET', ARGV[2] .. ARGV[4])
  if not impi then return false end
end
return redis.call('HGET', ARGV[1] .. impi, 'pb')
"""

# KEYS: IMPI index. ARGV: subscriber key prefix, after (exclusive, "" from the start), limit.
LIST_SUBSCRIBERS = """
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
local impis = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, impi in ipairs(impis) do
  local pb = redis.call('HGET', ARGV[1] .. impi, 'pb')
  if pb then out[#out + 1] = pb end
end
return out
"""

# KEYS: subscriber hash, IMPI index. ARGV: impi, IMPU key prefix.
# Returns the IMPUs it had (empty when there was no such subscriber).
DELETE_SUBSCRIBER = """
local old = redis.call('HGET', KEYS[1], 'impus')
local out = {}
if old then
  for impu in string.gmatch(old, '[^\\n]+') do
    if redis.call('GET', ARGV[2] .. impu) == ARGV[1] then redis.call('DEL', ARGV[2] .. impu) end
    out[#out + 1] = impu
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return out
"""
