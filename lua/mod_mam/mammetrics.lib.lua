-- The module's metrics, through Prosody's statistics API (0.12's module:metric,
-- OpenMetrics), each family labelled with the host. With statistics off Prosody
-- hands out no-op objects; on a Prosody without module:metric we do the same, so no
-- caller checks.

local noop = {};
local function nothing() return noop; end
setmetatable(noop, { __index = function () return nothing; end });

local function metric(type_, name, unit, description, labels, conf)
	if not module.metric then return noop; end
	return module:metric(type_, name, unit, description, labels or {}, conf);
end

-- One series per label value, looked up once: counting is then a field read and an add.
local function by_label(family)
	return setmetatable({}, { __index = function (t, value)
		local series = family:with_labels(value);
		t[value] = series;
		return series;
	end });
end

local skipped = by_label(metric("counter", "messages_skipped", "",
	"Messages not archived, by reason", { "reason" }));

return {
	archived = metric("counter", "messages_archived", "",
		"Messages archived (queued for the writer thread)"):with_labels();
	skipped = skipped;
	-- An append the engine refused (not a policy's "no"), counted by why.
	count_failure = function (err)
		skipped[err.condition == "resource-constraint" and "queue full" or "error"]:add(1);
	end;
	delivered_uncommitted = by_label(metric("counter", "messages_delivered_uncommitted", "",
		"Archived messages delivered before their commit although mam_commit_before_delivery is on, "
		.. "by reason: outside runner (offline storage or listeners reached where nothing can wait), "
		.. "storage slow (commits lag past mam_commit_wait_limit)",
		{ "reason" }));
	queries = by_label(metric("counter", "queries", "",
		"Archive queries by outcome: ok or the error condition sent", { "outcome" }));
	query_latency = metric("histogram", "query_latency", "seconds",
		"Archive queries answered with a fin: from the query arriving to the fin sent", {},
		{ buckets = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5 } }):with_labels();
	expiry_runs = metric("counter", "expiry_runs", "", "Expiry runs finished"):with_labels();
	expired = metric("counter", "expired_messages", "", "Messages deleted by expiry"):with_labels();
	expiry_duration = metric("histogram", "expiry_duration", "seconds",
		"Duration of successful expiry runs", {},
		{ buckets = { 0.01, 0.1, 1, 10, 60, 600 } }):with_labels();
	database_size = metric("gauge", "database_size", "bytes",
		"Archive database on disk: the file plus its write-ahead log"):with_labels();
	queue_depth = metric("gauge", "writer_queue_depth", "",
		"Writes queued and not yet committed"):with_labels();
	writes_committed = metric("counter", "writes_committed", "",
		"Writes the writer thread committed since the module loaded"):with_labels();
};
