import { Infra } from './system.js';
import { emergencyCleanup, failureMessage, runChaos, summarize, type ChaosResult } from './runner.js';

/**
 * The judge of the pipeline's promise (docs/pipeline.md): a seeded random
 * mix of traffic and faults (processes killed or stopped, PostgreSQL stopped,
 * read_db unavailable, commits stalled, Redis flushed or killed, LISTEN
 * sessions dropped, poison events) against the real Procfile processes on a
 * private PostgreSQL and Redis; then, once healed and drained: nothing lost,
 * nothing applied twice, views equal SPEC §3, every confirmed order in
 * write_db, failed/parked events exactly the poison, no process died on its
 * own, every SIGTERM a clean exit within 10 s.
 *
 * Fixed seeds: one run of 30–40 commands, and a second (the next seed) if
 * the first took under 75 s, so the spec stays under 3 minutes on two cores.
 * Longer, and other seeds: `npm run chaos -- --minutes 10`. CHAOS_SEED
 * overrides the seed; CHAOS_VERBOSE=1 prints the timeline as it happens.
 */
const SEED = Number(process.env.CHAOS_SEED ?? 20261125);
const SECOND_RUN_IF_UNDER_MS = 75_000;

describe('chaos: random faults under traffic, then every invariant (private PostgreSQL and Redis)', function () {
  this.timeout(180_000);
  let infra: Infra | undefined;

  // Ctrl-C or a killed CI job: stop the private PostgreSQL and Redis and remove their folders anyway.
  const onSignal = () => {
    emergencyCleanup(infra);
    process.exit(130);
  };

  before(async function () {
    this.timeout(60_000);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    infra = await Infra.create();
  });
  after(async function () {
    this.timeout(60_000);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await infra?.destroy();
  });

  it(`holds every invariant for seed ${SEED} (and ${SEED + 1} if time allows)`, async () => {
    const verbose = process.env.CHAOS_VERBOSE ? (line: string) => console.error(line) : undefined;
    const t0 = Date.now();
    const one = (seed: number): Promise<ChaosResult> =>
      runChaos(infra!, { seed, minCommands: 30, maxCommands: 40, system: { scale: { web: 2, relay: 2, worker: 2 }, env: {} }, ...(verbose ? { echo: verbose } : {}) });
    const results = [await one(SEED)];
    if (!results[0]!.failed && Date.now() - t0 < SECOND_RUN_IF_UNDER_MS) results.push(await one(SEED + 1));
    if (verbose) for (const r of results) for (const e of r.executions) verbose(summarize(e));
    const failed = results.find((r) => r.failed);
    if (failed) throw new Error(failureMessage(failed));
  });
});
