package proto

// The Redis key layout. Every key of the fleet starts with "cf:"; a
// deployment (or a test) may put a prefix of its own in front of all of
// them. Only the status record and the worker heartbeat are meant for
// readers outside comfyfleet; the others are named here so that no package
// spells a key of its own.
const (
	jobKeyPrefix      = "cf:job:"
	workerKeyPrefix   = "cf:worker:"
	leaseKeyPrefix    = "cf:lease:"
	heldKeyPrefix     = "cf:held:"
	attemptsKeyPrefix = "cf:attempts:"
	webhookKeyPrefix  = "cf:webhook:"
	batchKeyPrefix    = "cf:batch:"
	streamKeyPrefix   = "cf:stream:"
	previewKeyPrefix  = "cf:streampv:"
	rpAliveKeyPrefix  = "cf:rpalive:"
	rateKeyPrefix     = "cf:rate:"
	poolStatsPrefix   = "cf:poolstats:"
	activePrefix      = "cf:active:"

	// StatsKey is a hash of fleet-wide counters: jobs that reached each
	// terminal status (by status name), RETRIED, DUPLICATE (submissions
	// for an id that already had a record, dropped) and RECREATED (job
	// messages whose record was missing and was made again).
	StatsKey = "cf:stats"
	// WorkersKey is the set of worker ids with a heartbeat.
	WorkersKey = "cf:workers"
	// LeasesKey is a sorted set of leased job ids by the Unix millisecond
	// (Redis's clock) at which their lease lapses.
	LeasesKey = "cf:leases"
	// TTLKey is a sorted set of queued job ids by the Unix millisecond at
	// which their policy.ttl runs out.
	TTLKey = "cf:ttl"
	// KeptKey is a sorted set of the ids of ended jobs whose request is
	// kept in [RequestBucket], by the Unix millisecond (Redis's clock) at
	// which their record's retention ends: then the copy, with the job's
	// secrets, is removed by a sweeper.
	KeptKey = "cf:kept"
	// SweepKey is a hash of the sweepers' shared state (the last sweep,
	// and until when lease reclaims wait after an outage).
	SweepKey = "cf:sweep"
	// RecentKey is a sorted set of the most recently made job records'
	// ids by the Unix millisecond (Redis's clock) of their making, capped
	// at [RecentJobsCap]: the console's list of recent jobs. An id whose
	// record expired stays until it is pushed out or read.
	RecentKey = "cf:recent"
	// PausedKey is the set of paused lanes, each "<pool>/<lane>": workers
	// pull no job from them (the jobs stay queued) until they are resumed.
	PausedKey = "cf:paused"
	// DrainKey is the set of the ids of workers told to drain: each
	// finishes the jobs in hand and pulls no more until it is undrained.
	DrainKey = "cf:drain"
)

// RecentJobsCap bounds [RecentKey].
const RecentJobsCap = 10000

// PausedLane is a lane's member of [PausedKey]: "<pool>/<lane>".
func PausedLane(pool string, lane Lane) string { return pool + "/" + string(lane) }

// JobKey is the Redis key of a job's status record, a hash with the fields
// of [Record].
func JobKey(jobID string) string { return jobKeyPrefix + jobID }

// WorkerKey is the Redis key of a worker's heartbeat, a hash with the
// fields of [Heartbeat].
func WorkerKey(workerID string) string { return workerKeyPrefix + workerID }

// LeaseKey is the Redis key of the lease on a running job: a hash with the
// attempt, the worker, the delivery's ack subject and the execution
// deadline.
func LeaseKey(jobID string) string { return leaseKeyPrefix + jobID }

// HeldKey is the Redis key of the set of jobs leased to a worker.
func HeldKey(workerID string) string { return heldKeyPrefix + workerID }

// AttemptsKey is the Redis key of a job's attempt log: the error of every
// failed attempt, oldest first.
func AttemptsKey(jobID string) string { return attemptsKeyPrefix + jobID }

// WebhookKey is the Redis key of a job's webhook target and delivery mark.
func WebhookKey(jobID string) string { return webhookKeyPrefix + jobID }

// BatchKey is the Redis key of a batch's index (its items and settings);
// BatchKey(id)+":sent" is the set of its submitted jobs.
func BatchKey(batchID string) string { return batchKeyPrefix + batchID }

// StreamCursorKey is the Redis key of a job's /stream cursor: the sequence
// of the last event RunPod's /stream handed out for it.
func StreamCursorKey(jobID string) string { return streamKeyPrefix + jobID }

// PreviewCursorKey is the Redis key of a job's /stream preview cursor: the
// sequence, in the preview stream, of the last preview /stream handed out.
func PreviewCursorKey(jobID string) string { return previewKeyPrefix + jobID }

// RunPodAliveKey is the Redis key of the time (Unix milliseconds) from
// which a RunPod worker's pings alone count down JOB_TAKE_LIVENESS (the
// runpod-adapter's job-take host): now while its job-stop poll is open,
// ahead of now after the host answered one. Made by the worker's first
// job-stop poll; a worker that never polls job-stop has none.
func RunPodAliveKey(workerID string) string { return rpAliveKeyPrefix + workerID }

// PoolStatsKey is the Redis key of one pool's counters, a hash like
// [StatsKey] with the terminal statuses and RETRIED of the jobs of that
// pool (RunPod's /health of an endpoint mapped to the pool).
func PoolStatsKey(pool string) string { return poolStatsPrefix + pool }

// ActiveKey is the Redis key of the jobs of a tenant with a concurrency
// cap that are on a lane or running: a sorted set of job ids by the Unix
// millisecond (Redis's clock) at which a dispatcher released each from
// [HoldStream]. A job leaves it when it ends (the transition script's
// final step) or, found ended or gone, when the set is full.
func ActiveKey(tenant string) string { return activePrefix + orDefaultTenant(tenant) }

// ActiveKeyPrefix is [ActiveKey] without the tenant, for the transition
// script.
const ActiveKeyPrefix = activePrefix

// RateKey is the Redis key of the count of jobs that ended in one minute
// (Unix minutes, Redis's clock), a hash by lane ([PausedLane]'s form,
// "<pool>/<lane>"), kept 3 minutes: the fleet's jobs per minute.
func RateKey(minute string) string { return rateKeyPrefix + minute }
