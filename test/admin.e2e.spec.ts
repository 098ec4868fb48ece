import assert from 'node:assert/strict';
import fs from 'node:fs';
import pg from 'pg';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { sleep } from './support/pipeline.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const PASSWORD = 'admin-view-password';

/**
 * The admin view driven through its page in headless Chromium, every action
 * a click on a form: replay a failed event, park another, run verify and read
 * its result, start a rebuild, watch it run (held on a lock this test takes),
 * be refused a second one, and see it finish. No console error (a CSP
 * violation is one).
 */
describe('admin view (end to end, headless Chromium)', function () {
  this.timeout(180_000);
  let f: WebFixture;
  let relay: RelayHandle;
  let worker: ProjectorHandle;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  const problems: string[] = [];
  const failed: number[] = [];

  before(async () => {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH`);
    f = await startTestWeb({ ADMIN_PASSWORD: PASSWORD, RECONCILE_INTERVAL_MS: '200', RECONCILE_GRACE_MS: '500', JOB_BACKOFF_MS: '50' });
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    // Two orders whose events read_db refuses every time (a constraint on one product): dead letters.
    const a = await createProduct(f.base, { price: '1.00', stock: 1000 });
    const x = await createProduct(f.base, { price: '9.99', stock: 10 });
    await f.read.query(`ALTER TABLE product_sales_view ADD CONSTRAINT test_no_x CHECK (product_id <> ${x})`);
    await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: a, quantity: 1 }] });
    for (const customer of [50, 51]) {
      const r = await call(f.base, 'POST', '/orders', { customer_id: customer, items: [{ product_id: x, quantity: 1 }] });
      failed.push(Number(r.headers.get('x-consistency-token')));
    }
    await until('both dead letters recorded', async () => (await f.read.query(`SELECT 1 FROM dead_letters WHERE parked_at IS NULL`)).rows.length === 2);
    // The fix: read_db takes the product again.
    await f.read.query('ALTER TABLE product_sales_view DROP CONSTRAINT test_no_x');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    context = await browser.newContext({ httpCredentials: { username: 'ops', password: PASSWORD } });
    page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
    await worker?.stop();
    await f?.stop();
  });

  async function until(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
    const t = Date.now();
    while (Date.now() - t < ms) {
      if (await cond()) return;
      await sleep(100);
    }
    throw new Error(`timed out: ${what}`);
  }

  /** Load /admin until cond holds on it (the page reloads itself while a job runs: a check may meet a navigation, and is tried again). */
  async function pageUntil(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
    await until(
      what,
      async () => {
        try {
          await page.goto(`${f.base}/admin`);
          return await cond();
        } catch {
          return false;
        }
      },
      ms,
    );
  }

  const text = async (selector: string) => ((await page.locator(selector).first().textContent()) ?? '').trim();
  const notice = () => page.getAttribute('#notice', 'data-code');

  it('shows the pipeline: backlog, relays and workers alive, every projection, the failed events', async () => {
    const res = await page.goto(`${f.base}/admin`);
    assert.equal(res?.status(), 200);
    assert.equal(await page.title(), 'Order pipeline — admin');
    assert.match(await text('#backlog'), /^0 outbox row\(s\) not yet relayed/);
    await pageUntil('relay and worker alive', async () => (await page.locator('#processes td.good').count()) === 2);
    assert.deepEqual(await page.$$eval('#processes tbody tr', (rows) => rows.map((r) => r.getAttribute('data-proc'))), ['relay', 'worker']);
    assert.deepEqual(
      await page.$$eval('#projections tbody tr', (rows) => rows.map((r) => r.getAttribute('data-projection'))),
      ['product_sales_view', 'category_metrics_view', 'customer_ltv_view', 'hourly_sales_view'],
    );
    assert.deepEqual(await page.$$eval('#failed tbody tr', (rows) => rows.map((r) => Number(r.getAttribute('data-event')))), failed);
    assert.match(await text(`#failed tr[data-event="${failed[0]}"] td.error`), /test_no_x/);
  });

  it('replays a failed event: it is applied and leaves the list', async () => {
    await page.goto(`${f.base}/admin`);
    await page.click(`#failed tr[data-event="${failed[0]}"] button:has-text("Replay")`);
    assert.match((await notice()) ?? '', /^replay\.(retried|requeued)$/);
    assert.equal(new URL(page.url()).pathname, '/admin');
    await pageUntil('the replayed event applied', async () => (await page.locator(`#failed tr[data-event="${failed[0]}"]`).count()) === 0);
    assert.equal((await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(failed[0])])).rows.length, 1);
  });

  it('parks a failed event with a reason: it moves to the parked list', async () => {
    await page.goto(`${f.base}/admin`);
    const row = page.locator(`#failed tr[data-event="${failed[1]}"]`);
    await row.locator('input[name="reason"]').fill('test order, never to be counted');
    await row.locator('button:has-text("Park")').click();
    assert.equal(await notice(), 'park.parked');
    assert.equal(await page.locator('#failed tbody tr').count(), 0);
    assert.match(await text(`#parked tr[data-event="${failed[1]}"]`), /test order, never to be counted/);
  });

  it('runs verify and shows its result, per projection too', async () => {
    await page.goto(`${f.base}/admin`);
    assert.match(await text('#verify-last'), /Never run/);
    await page.click('#verify button:has-text("Run verify")');
    assert.equal(await notice(), 'verify.started');
    await pageUntil('verify finished', async () => (await page.locator('#verify-run .state').textContent())?.startsWith('finished') ?? false);
    assert.match(await text('#verify-run .state'), /exit 0$/);
    assert.equal(await text('#verify-last .outcome'), 'OK');
    assert.match(await text('#verify-last'), /1 parked/);
    assert.match(await text('#verify-run pre'), /verify: OK/);
    const verified = await page.$$eval('#projections td.verify', (tds) => tds.map((td) => td.textContent ?? ''));
    assert.equal(verified.length, 4);
    for (const v of verified) assert.match(v, /^ok \(\d+ s ago\)$/);
  });

  it('starts a rebuild, shows it running, refuses a second one, and shows it finished', async () => {
    // Hold the rebuild at its first step (it locks processed_events) so that it can be seen running.
    const holder = new pg.Client({ connectionString: f.env.config.READ_DATABASE_URL });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
      // A second operator's page, loaded before the start: its button is still there.
      const other = await context.newPage();
      await other.goto(`${f.base}/admin`);
      await page.goto(`${f.base}/admin`);
      await page.click('#rebuild button:has-text("Start rebuild")');
      assert.equal(await notice(), 'rebuild.started');
      await pageUntil('the rebuild seen running', async () => /^running/.test(await text('#projections tr[data-projection="product_sales_view"] td.rebuild')));
      assert.match(await text('#rebuild-run .state'), /^running since/);
      assert.match(await text('#rebuild-state'), /running/);
      assert.equal(await page.locator('#rebuild button').count(), 0, 'no start button while one runs');
      // The other page's start is refused.
      await other.click('#rebuild button:has-text("Start rebuild")');
      assert.equal(await other.getAttribute('#notice', 'data-code'), 'rebuild.running');
      await other.close();
    } finally {
      await holder.query('ROLLBACK');
      await holder.end();
    }
    // Finished, and the start button back: the page counts a rebuild session on read_db as a rebuild running, and the
    // exited command's sessions can still be listed for a moment after it has exited.
    await pageUntil('the rebuild finished', async () => (await text('#rebuild-run .state')).startsWith('finished') && (await page.locator('#rebuild button:has-text("Start rebuild")').count()) === 1, 60_000);
    assert.match(await text('#rebuild-run .state'), /exit 0$/);
    assert.match(await text('#rebuild-run pre'), /rebuild: done in/);
    assert.match(await text('#rebuild-state'), /done/);
    assert.equal(await page.locator('#rebuild button:has-text("Start rebuild")').count(), 1);
    // The rebuild's recomputation counts the parked event's order: its dead letter is resolved.
    assert.equal(await page.locator('#parked tbody tr').count(), 0);
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    assert.deepEqual(problems, []);
  });
});
