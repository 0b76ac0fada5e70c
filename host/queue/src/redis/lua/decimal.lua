-- Exact decimal arithmetic on strings ("12.000034"), for money: Lua's numbers are doubles,
-- which must never carry an amount. Amounts are never negative; a subtraction that would go
-- below zero gives "0". Prepended to the scripts that add or compare money.

-- The integer and fraction digits of `s`; an amount that is not one is refused.
local function dec_parts(s)
  local i, f = string.match(s, '^(%d*)%.?(%d*)$')
  if i == nil or (i == '' and f == '') then
    error('not a decimal amount: ' .. tostring(s))
  end
  if i == '' then i = '0' end
  return i, f
end

-- `a` and `b` as digit strings of one length with the same number of fraction digits, and that
-- number.
local function dec_align(a, b)
  local ai, af = dec_parts(a)
  local bi, bf = dec_parts(b)
  local fl = math.max(#af, #bf)
  af = af .. string.rep('0', fl - #af)
  bf = bf .. string.rep('0', fl - #bf)
  local il = math.max(#ai, #bi)
  ai = string.rep('0', il - #ai) .. ai
  bi = string.rep('0', il - #bi) .. bi
  return ai .. af, bi .. bf, fl
end

-- Digits with `fl` fraction digits, written without leading or trailing zeros.
local function dec_text(digits, fl)
  local int = string.sub(digits, 1, #digits - fl)
  local frac = string.sub(digits, #digits - fl + 1)
  int = string.gsub(int, '^0+', '')
  frac = string.gsub(frac, '0+$', '')
  if int == '' then int = '0' end
  if frac == '' then return int end
  return int .. '.' .. frac
end

-- -1, 0 or 1 as `a` is less than, equal to or more than `b`.
local function dec_cmp(a, b)
  local x, y = dec_align(a, b)
  if x == y then return 0 end
  if x < y then return -1 end
  return 1
end

local function dec_add(a, b)
  local x, y, fl = dec_align(a, b)
  local out, carry = {}, 0
  for k = #x, 1, -1 do
    local d = string.byte(x, k) + string.byte(y, k) - 96 + carry
    if d >= 10 then out[k], carry = d - 10, 1 else out[k], carry = d, 0 end
  end
  local digits = table.concat(out)
  if carry > 0 then digits = '1' .. digits end
  return dec_text(digits, fl)
end

-- `a - b`, or "0" when `b` is not less than `a`.
local function dec_sub(a, b)
  if dec_cmp(a, b) <= 0 then return '0' end
  local x, y, fl = dec_align(a, b)
  local out, borrow = {}, 0
  for k = #x, 1, -1 do
    local d = string.byte(x, k) - string.byte(y, k) - borrow
    if d < 0 then out[k], borrow = d + 10, 1 else out[k], borrow = d, 0 end
  end
  return dec_text(table.concat(out), fl)
end

-- Add `amount` to the decimal in field `field` of hash `key` (absent: 0).
local function hadd_dec(key, field, amount)
  local sum = dec_add(redis.call('HGET', key, field) or '0', amount)
  redis.call('HSET', key, field, sum)
  return sum
end
