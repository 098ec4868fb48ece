import assert from 'node:assert/strict';
import { isMultiEvent, toJobs, type EventsJobData } from '../lib/queue.js';

const config = { JOB_ATTEMPTS: 3, JOB_BACKOFF_MS: 100, RELAY_JOB_EVENTS: 3 };
const rows = [1, 2, 3, 4, 5, 6, 7].map((id) => ({ id, topic: 'order.created', payload: { id }, created_at: '2026-11-27T00:00:00.000000Z' }));

describe('toJobs (unit): the relay’s jobs and their traceparents', () => {
  it('each job carries the traceparent given for its range of rows, a job of several events at its top level only', () => {
    const asked: string[] = [];
    const jobs = toJobs(config, rows, (from, to) => {
      asked.push(`${from}-${to}`);
      return from === 3 ? undefined : `tp ${from}-${to}`;
    });
    assert.deepEqual(asked, ['0-3', '3-6', '6-7'], 'once per job, for its rows');
    assert.equal(jobs.length, 3);
    const [first, second] = jobs.map((j) => j.data as EventsJobData);
    assert.ok(isMultiEvent(first!) && isMultiEvent(second!));
    assert.deepEqual(first!.events.map((e) => e.event_id), ['1', '2', '3']);
    assert.equal(first!.traceparent, 'tp 0-3');
    assert.equal('traceparent' in second!, false, 'none given, none carried');
    assert.deepEqual([...first!.events, ...second!.events].filter((e) => 'traceparent' in e), [], 'no event of a several-event job carries a traceparent');
    assert.deepEqual(jobs[2]!.data, { event_id: '7', topic: 'order.created', payload: { id: 7 }, created_at: rows[6]!.created_at, traceparent: 'tp 6-7' }, 'a job of one event carries it as its own');
  });
});
