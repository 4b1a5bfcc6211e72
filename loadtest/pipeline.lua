-- wrk script for `leadstream bench pipeline`: Snowplow GET pixel hits of the bench site (aid=acme),
-- each with its own event id and the current time, from 2,000 visitors behind 100 demo company IPs
-- (X-Forwarded-For; the collector trusts 127.0.0.1). LEADSTREAM_WRK_DELAY_MS, when set, makes each
-- connection wait that long before each request: a paced load instead of the maximum.
local counter = 0
local thread_id = 0
local delay_ms = tonumber(os.getenv("LEADSTREAM_WRK_DELAY_MS") or "0")
local visitors = tonumber(os.getenv("LEADSTREAM_WRK_VISITORS") or "2000")
local ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end
function init(args)
  math.randomseed(os.time() + id)
end
request = function()
  counter = counter + 1
  local visitor = math.random(1, visitors)
  local now = os.time() * 1000
  local eid = string.format("%08x-%04x-4%03x-a%03x-%012x", math.random(0, 0x7fffffff), id % 0x10000,
                            counter % 0x1000, math.random(0, 0xfff), counter)
  local path = string.format(
    "/i?e=pv&aid=acme&p=web&tv=js-3.0.0&eid=%s&duid=bg-%d&url=https%%3A%%2F%%2Fwww.acme.example%%2Fpricing&page=Pricing&dtm=%d&stm=%d&res=1920x1080&lang=en-US",
    eid, visitor, now, now)
  return wrk.format("GET", path, {["User-Agent"] = ua, ["Accept-Language"] = "en",
                                  ["X-Forwarded-For"] = string.format("198.51.100.%d", visitor % 100 + 1)})
end
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end
