-- Test probe: an outgoing-stanza filter on the sessions of resource "filtered", as
-- stream management, websocket framing or CSI add one, logging each MAM result it is
-- handed and whether it is a stanza object (what such filters need); and an
-- outgoing-bytes filter on resource "bytes", logging how many MAM results each write
-- carries (a byte filter must see one stanza per send); and, on resource
-- "explosive", an outgoing-stanza filter that raises an error on a message whose body
-- is "boom" (another module's failing filter).

local filters = require "util.filters";
local st = require "util.stanza";

local function probe(stanza, session)
	if type(stanza) == "table" and stanza.name == "message" then
		local result = st.is_stanza(stanza) and stanza:get_child("result", "urn:xmpp:mam:2");
		if result then
			module:log("info", "probe: filter saw result %s for %s", result.attr.id, session.full_jid);
		end
	elseif type(stanza) == "string" and stanza:find("urn:xmpp:mam:2", 1, true) then
		module:log("info", "probe: filter saw a string for %s", session.full_jid);
	end
	return stanza;
end

local function bytes_probe(data, session)
	local _, results = data:gsub("<result xmlns='urn:xmpp:mam:2'", "");
	local _, fins = data:gsub("<fin xmlns='urn:xmpp:mam:2'", "");
	if results + fins > 0 then
		module:log("info", "probe: bytes filter saw %d results and %d fins in one send for %s",
			results, fins, session.full_jid);
	end
	return data;
end

local function explosive(stanza)
	if type(stanza) == "table" and stanza.name == "message" and stanza:get_child_text("body") == "boom" then
		error("probe: boom");
	end
	return stanza;
end

module:hook("resource-bind", function (event)
	local session = event.session;
	if session.resource == "filtered" then
		filters.add_filter(session, "stanzas/out", probe);
	elseif session.resource == "explosive" then
		filters.add_filter(session, "stanzas/out", explosive);
	elseif session.resource == "bytes" then
		filters.add_filter(session, "bytes/out", bytes_probe);
	end
end);
