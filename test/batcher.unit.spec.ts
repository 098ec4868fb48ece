import assert from 'node:assert/strict';
import { Batcher } from '../lib/batcher.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('Batcher (unit): group commit', () => {
  it('runs one flush at a time and gathers what arrives meanwhile into the next batch', async () => {
    const batches: number[][] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const b = new Batcher<number, number>(
      async (items) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        batches.push(items);
        await sleep(20);
        inFlight--;
        return items.map((i) => i * 10);
      },
      100,
      1,
    );
    const first = b.submit(1);
    await sleep(5); // the first batch [1] is committing now
    const rest = [2, 3, 4, 5].map((i) => b.submit(i));
    assert.deepEqual(await Promise.all([first, ...rest]), [10, 20, 30, 40, 50]);
    assert.deepEqual(batches, [[1], [2, 3, 4, 5]]);
    assert.equal(maxInFlight, 1);
  });

  it('splits at the size limit and hands every waiter its own result or the batch error', async () => {
    const sizes: number[] = [];
    const b = new Batcher<number, string>(
      async (items) => {
        sizes.push(items.length);
        if (items.includes(13)) throw new Error('batch failed');
        return items.map(String);
      },
      5,
      1000,
    );
    const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => b.submit(i + 4)));
    assert.deepEqual(sizes, [5, 5, 2]);
    assert.deepEqual(results.map((r) => r.status), [...Array(5).fill('fulfilled'), ...Array(5).fill('rejected'), 'fulfilled', 'fulfilled']);
    assert.equal((results[0] as PromiseFulfilledResult<string>).value, '4');
  });

  it('drain() waits until everything submitted has been flushed', async () => {
    let done = 0;
    const b = new Batcher<number, number>(async (items) => {
      await sleep(10);
      done += items.length;
      return items;
    }, 2, 10_000);
    for (let i = 0; i < 5; i++) void b.submit(i);
    await b.drain();
    assert.equal(done, 5);
  });

  it('with waitMs 0 flushes at the end of the event-loop turn, and gathers only while maxInFlight batches run', async () => {
    const batches: number[][] = [];
    const b = new Batcher<number, number>(
      async (items) => {
        batches.push(items);
        await sleep(20);
        return items;
      },
      100,
      0,
      2,
    );
    // The next check phase, after the batcher's own setImmediate (queued first). Not a 1 ms timer: on a
    // loaded machine the timers phase comes first and would run it before the batcher's flush.
    const nextTurn = () => new Promise((r) => setImmediate(r));
    const t0 = performance.now();
    const first = [b.submit(1), b.submit(2)]; // same turn: one batch, sent at once
    await nextTurn();
    const second = b.submit(3); // a slot is free: goes alone, no waiting
    await nextTurn();
    const third = [4, 5, 6].map((i) => b.submit(i)); // both slots busy: these gather
    await Promise.all([...first, second, ...third]);
    assert.deepEqual(batches, [[1, 2], [3], [4, 5, 6]]);
    assert.ok(performance.now() - t0 < 200);
  });
});
