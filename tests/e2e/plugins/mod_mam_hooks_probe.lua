-- Test probe: another module using mod_mam's extension events, as third-party
-- modules do. Vetoes archiving of messages whose body is "veto-me" through
-- archive-should-store, and logs every archive-message-added event.

module:hook("archive-should-store", function (event)
	if event.stanza:get_child_text("body") == "veto-me" then
		return false;
	end
end, 10);

module:hook("archive-message-added", function (event)
	module:log("info", "probe: archive-message-added for_user=%s id=%s body=%s chatstate=%s",
		tostring(event.for_user), tostring(event.id), tostring(event.stanza:get_child_text("body")),
		tostring(event.stanza:get_child(nil, "http://jabber.org/protocol/chatstates") ~= nil));
end);
