-- wrk script: Snowplow GET pixel hits, each with its own event id, from 5,000 visitors.
local counter = 0
local thread_id = 0
function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end
function init(args)
  math.randomseed(os.time() + id)
end
request = function()
  counter = counter + 1
  local visitor = math.random(1, 5000)
  local path = string.format(
    "/i?e=pv&aid=bench&p=web&tv=js-3.0.0&eid=%d-%d-%d&duid=visitor-%d&url=https%%3A%%2F%%2Fwww.bench.example%%2Fpricing%%3Futm_source%%3Dbench&page=Pricing&refr=https%%3A%%2F%%2Fwww.google.com%%2F&dtm=1795000000000&stm=1795000000100&res=1920x1080&lang=en-US",
    id, counter, math.random(1, 1000000000), visitor)
  return wrk.format("GET", path, {["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"})
end
