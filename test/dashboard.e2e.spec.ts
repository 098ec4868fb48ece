import assert from 'node:assert/strict';
import fs from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { waitForDrain } from './support/pipeline.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { rebuild } from '../db/rebuild.js';
import { prune } from '../db/retention.js';
import { sql } from '../db/pool.js';
import { z } from 'zod';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

describe('dashboard (end to end, headless Chromium)', function () {
  this.timeout(120_000);
  let f: WebFixture;
  let relay: RelayHandle;
  let worker: ProjectorHandle;
  let browser: Browser;

  before(async () => {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH`);
    f = await startTestWeb();
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    const tools = await createProduct(f.base, { category: 'tools', price: '19.99', stock: 100 });
    const toys = await createProduct(f.base, { category: 'toys', price: '0.10', stock: 100 });
    await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: tools, quantity: 7 }, { product_id: toys, quantity: 3 }] });
    await call(f.base, 'POST', '/orders', { customer_id: 2, items: [{ product_id: toys, quantity: 10 }] });
    const c = await call(f.base, 'POST', '/orders', { customer_id: 3, items: [{ product_id: tools, quantity: 1 }] });
    await call(f.base, 'POST', `/orders/${c.json.id}/cancel`);
    await waitForDrain(f.writeDb, f.readDb);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
    await worker?.stop();
    await f?.stop();
  });

  it('loads without console errors and shows the figures of a known data set', async () => {
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));
    const res = await page.goto(`${f.base}/`);
    assert.equal(res?.status(), 200);
    assert.equal(await page.title(), 'Order pipeline');
    assert.equal(await page.textContent('#orders b'), '2');
    assert.equal(await page.textContent('#revenue b'), '141.23');
    assert.equal(await page.textContent('#events b'), '4'); // the last of four events: three orders and one cancellation
    assert.equal(await page.textContent('#backlog b'), '0');
    const categories = await page.$$eval('#categories tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
    assert.deepEqual(categories, [['tools', '139.93', '1'], ['toys', '1.30', '2']]);
    const products = await page.$$eval('#top-products tbody tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
    assert.deepEqual(products, ['139.93', '1.30']);
    assert.equal(await page.locator('svg[aria-label^="Revenue per hour"] rect').count(), 1);
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    assert.deepEqual(problems, []);
  });

  it('still shows the last event applied once a full rebuild and prune have emptied processed_events', async () => {
    const r = await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    assert.equal(r.swapped, true);
    assert.equal(r.floor, 4); // the floor covers all four events
    await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 0 }); // and their rows go: the floor says they were applied
    assert.equal(await f.readDb.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM processed_events`), 0);
    const page = await browser.newPage();
    await page.goto(`${f.base}/`);
    assert.equal(await page.textContent('#events b'), '4');
    assert.equal(await page.textContent('#revenue b'), '141.23');
  });
});
