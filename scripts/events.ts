import { configOrExit } from '../lib/lifecycle.js';
import { commandLine, fail } from '../lib/cli.js';
import { createQueues } from '../lib/queue.js';
import { createRedis } from '../lib/redis.js';
import { createLogger } from '../lib/logger.js';
import { createDb } from '../db/pool.js';
import { listDeadLetters, type DeadLetterState } from '../db/dead-letters.js';
import { parkEvent, replayAllFailed, replayDeadLetter } from '../workers/dead-letters.js';

const USAGE = `usage: npm run events [-- <command>]

  list [--parked | --all] [--json]     events that failed for good (the default command; by default those waiting for a decision)
  replay <event id>...                 send them to the workers again (after a fix); unparks parked ones
  replay --all                         every failed event, and every job in BullMQ's failed set
  park <event id> --reason "<why>"     never apply it; verify then reports it by id instead of a difference`;

/** npm run events: the dead letters (db/dead-letters.ts) and an operator's decisions about them. */
async function main(): Promise<number> {
  const { values, positionals } = commandLine(
    'events',
    USAGE,
    { parked: { type: 'boolean' }, all: { type: 'boolean' }, json: { type: 'boolean' }, reason: { type: 'string' } },
    true,
  );
  const [command = 'list', ...ids] = positionals;
  if (!['list', 'replay', 'park'].includes(command)) fail('events', `unknown command ${JSON.stringify(command)}; the commands are list, replay and park`);
  const bad = ids.find((id) => !/^[1-9]\d{0,9}$/.test(id));
  if (bad !== undefined) fail('events', `${JSON.stringify(bad)} is not an event id (the outbox id, e.g. 1234)`);
  if (command === 'replay' && !values.all && ids.length === 0) fail('events', 'replay needs event ids or --all');
  if (command === 'park' && (ids.length !== 1 || !values.reason?.trim())) fail('events', 'park takes one event id and --reason "<why>"');
  const config = configOrExit('events', { findRunning: true });
  const log = createLogger('warn', 'events');
  const readDb = createDb(config.READ_DATABASE_URL, { name: 'events', max: 2, log });
  const redis = createRedis(config, 'worker', log, 'events');
  const queues = createQueues(config, redis);
  queues.on('error', () => undefined);
  const ops = { readDb, queues, config };
  try {
    if (command === 'list') {
      const state: DeadLetterState = values.all ? 'all' : values.parked ? 'parked' : 'failed';
      const rows = await listDeadLetters(readDb, state);
      if (values.json) {
        console.log(JSON.stringify(rows, null, 2));
        return 0;
      }
      if (rows.length === 0) {
        console.log(`no ${state === 'all' ? '' : `${state} `}events`);
        return 0;
      }
      for (const d of rows) {
        const status = d.parked_at ? `parked ${d.parked_at} (${d.park_reason})` : `failed ${d.failed_at} after ${d.attempts} attempt(s)`;
        console.log(`${d.event_id}\t${d.topic}\t${status}\n\t${d.error}`);
      }
      return 0;
    }
    if (command === 'replay') {
      if (values.all) {
        console.log(`replayed ${await replayAllFailed(ops)} failed event(s)`);
        return 0;
      }
      let failures = 0;
      for (const id of ids) {
        const r = await replayDeadLetter(ops, id);
        if (r === 'not_found' || r === 'below_floor' || r === 'already_applied') failures++;
        console.log(`${id}: ${r.replaceAll('_', ' ')}`);
      }
      return failures > 0 ? 1 : 0;
    }
    const r = await parkEvent(ops, ids[0]!, values.reason!.trim());
    console.log(`${ids[0]}: ${r.replaceAll('_', ' ')}`);
    return r === 'parked' || r === 'already_parked' ? 0 : 1;
  } finally {
    await queues.close().catch(() => undefined);
    redis.disconnect();
    await readDb.end();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`events: ${(err as Error).message}`);
    process.exit(1);
  },
);
