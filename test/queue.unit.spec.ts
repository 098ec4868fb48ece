import assert from 'node:assert/strict';
import { isMultiEvent, toJobs, type EventsJobData } from '../lib/queue.js';

const config = { JOB_ATTEMPTS: 3, JOB_BACKOFF_MS: 100, RELAY_JOB_EVENTS: 3 };
const rows = [1, 2, 3, 4, 5].map((id) => ({ id, topic: 'order.created', payload: { id }, created_at: '2026-11-27T00:00:00.000000Z' }));
const tp = (n: number) => `00-${String(n).repeat(32)}-${String(n).repeat(16)}-01`;

describe('toJobs (unit): the relay’s jobs and their traceparents', () => {
  it('a job of several events carries one traceparent, its first traced event’s; the events carry none', () => {
    // Rows 1 and 3 traced: the first job (1, 2, 3) carries 1's; the second (4, 5) none; a job of one event its own.
    const jobs = toJobs(config, rows, (i) => (i === 0 || i === 2 ? tp(i + 1) : undefined));
    assert.equal(jobs.length, 2);
    const [first, second] = jobs.map((j) => j.data as EventsJobData);
    assert.ok(isMultiEvent(first!) && isMultiEvent(second!));
    assert.deepEqual(first!.events.map((e) => e.event_id), ['1', '2', '3']);
    assert.equal(first!.traceparent, tp(1));
    assert.equal(second!.traceparent, undefined);
    assert.deepEqual([...first!.events, ...second!.events].filter((e) => 'traceparent' in e), [], 'no event of a several-event job carries a traceparent');

    const later = toJobs(config, rows.slice(0, 2), (i) => (i === 1 ? tp(2) : undefined));
    assert.equal((later[0]!.data as EventsJobData).traceparent, tp(2), 'the first traced event need not be the first event');
    const single = toJobs(config, rows.slice(4), () => tp(5));
    assert.deepEqual(single[0]!.data, { event_id: '5', topic: 'order.created', payload: { id: 5 }, created_at: rows[4]!.created_at, traceparent: tp(5) });
  });
});
