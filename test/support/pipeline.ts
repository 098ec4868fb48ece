import type { Db } from '../../db/pool.js';
import { z } from 'zod';
import { sql } from '../../db/pool.js';
import { compareEventIds, compareViews, type Difference } from '../../db/recompute.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait until every outbox row is published and its id processed; throws with the backlog after `timeoutMs`. */
export async function waitForDrain(write: Db, read: Db, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const unpublished = await write.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL`);
    const ids = await compareEventIds(write, read);
    last = `unpublished=${unpublished} unprocessed=${ids.unprocessed.length} unknown=${ids.unknown.length}`;
    if (unpublished === 0 && ids.unprocessed.length === 0 && ids.unknown.length === 0) return;
    await sleep(100);
  }
  throw new Error(`pipeline did not drain in ${timeoutMs} ms: ${last}`);
}

/**
 * The SPEC §3 invariant: views equal the recomputation and processed ids equal
 * outbox ids, with no dead letter unless `deadLetters` lists exactly them
 * (parked ones are counted as verify counts them).
 */
export async function assertConsistent(write: Db, read: Db, deadLetters: number[] = []): Promise<void> {
  const ids = await compareEventIds(write, read);
  const diffs: Difference[] = await compareViews(write, read, ids.parked.flatMap((p) => p.event ?? []));
  const problems: string[] = [];
  const letters = [...ids.failed, ...ids.parked.map((p) => p.id)].sort((a, b) => a - b);
  const wanted = [...deadLetters].sort((a, b) => a - b);
  if (letters.join() !== wanted.join()) problems.push(`dead letters ${letters.join(',') || '(none)'}, expected ${wanted.join(',') || '(none)'}`);
  if (diffs.length > 0) problems.push(`view differences: ${JSON.stringify(diffs.slice(0, 10))}${diffs.length > 10 ? ` (+${diffs.length - 10})` : ''}`);
  if (ids.unprocessed.length > 0) problems.push(`unprocessed events: ${ids.unprocessed.slice(0, 20).join(',')}`);
  if (ids.unknown.length > 0) problems.push(`processed ids not in outbox: ${ids.unknown.slice(0, 20).join(',')}`);
  if (problems.length > 0) throw new Error(problems.join('\n'));
}
