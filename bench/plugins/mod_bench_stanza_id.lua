-- mam-bench configuration `nomam-sid`: no archive at all, only the <stanza-id/>
-- (XEP-0359) that every XEP-0313 archive adds to each message it delivers to an
-- archiving user, stock mod_mam's included. Nothing is stored: this measures what
-- that one element costs Prosody to build and serialise, the throughput ceiling for
-- any compliant MAM module.
local st = require "util.stanza";
local jid_split = require "util.jid".split;

local host = module.host;
local xmlns_st_id = "urn:xmpp:sid:0";

local count = 0;

local function add_stanza_id(event)
	local stanza = event.stanza;
	local user = jid_split(stanza.attr.to);
	if not user then return; end
	count = count + 1;
	-- Unique and 26 characters long, like the ids mod_mam_native assigns (stock
	-- mod_mam's UUIDs are 36).
	stanza:add_direct_child(st.stanza("stanza-id", {
		xmlns = xmlns_st_id;
		by = user .. "@" .. host;
		id = string.format("%026d", count);
	}));
end

module:hook("message/bare", add_stanza_id, 0);
module:hook("message/full", add_stanza_id, 0);
