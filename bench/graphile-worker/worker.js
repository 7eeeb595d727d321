// graphile-worker's commit -> handler start (bench/graphile-worker/run.sh): a trigger adds a
// job per inserted review with its transaction's start (now()); the handler records when it
// began. Its per-job log lines are dropped (warnings and errors kept): writing one per job
// would slow it, as reviews-worker's bench runs with RUST_LOG=warn.
const { run, Logger } = require("graphile-worker");
const { performance } = require("perf_hooks");
const connectionString = process.env.DATABASE_URL;
const seconds = Number(process.env.SECONDS_TO_RUN || 20);
const concurrency = Number(process.env.CONCURRENCY || 10);
const latencies = [];
async function main() {
  const runner = await run({
    connectionString,
    concurrency,
    noHandleSignals: true,
    pollInterval: 2000,
    logger: new Logger(() => (level, message) => {
      if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
    }),
    taskList: {
      review_created: async (payload) => {
        const now = (performance.timeOrigin + performance.now()) / 1000;
        latencies.push((now - payload.tx_start) * 1000);
      },
    },
  });
  process.stdout.write("ready\n");
  await new Promise((r) => setTimeout(r, seconds * 1000));
  await runner.stop();
  const xs = latencies.slice(Math.floor(latencies.length * 0.05)).sort((a, b) => a - b); // skip warm-up
  if (xs.length === 0) { console.log("no jobs"); return; }
  const p = (q) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))].toFixed(2);
  console.log(`graphile-worker 0.18.0 concurrency ${concurrency}: commit (tx start) -> handler start p50 ${p(0.5)} ms p95 ${p(0.95)} ms p99 ${p(0.99)} ms (n=${xs.length})`);
}
main().catch((e) => { console.error(e); process.exit(1); });
