// The auditor's page in a real headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core, a fresh profile), with axe-core run inside each page. Called by the Rust test
// `auditor_page_in_chromium`; prints one JSON object with what it saw. Never downloads a browser.
//
// Environment: TRESOR_NODE_MODULES (playwright-core, axe-core), TRESOR_WEB_URL, TRESOR_AUDITOR_TOKEN.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const modules = process.env.TRESOR_NODE_MODULES;
const { chromium } = require(path.join(modules, 'playwright-core'));
const axeSource = fs.readFileSync(path.join(modules, 'axe-core', 'axe.min.js'), 'utf8');
const base = process.env.TRESOR_WEB_URL.replace(/\/$/, '');
const token = process.env.TRESOR_AUDITOR_TOKEN;

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

async function axe(page, name, out) {
  await page.evaluate(axeSource);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  for (const v of r.violations) {
    out.violations.push({ page: name, id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) });
  }
  out.pages_checked.push(name);
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tresor-chromium-'));
  const out = { pages_checked: [], violations: [], drills: [], reports: [], audit_rows: 0,
    forms_on_overview: 0, refused_posts: {}, bad_token_refused: false, sign_in_shown: false };
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true, args: FLAGS,
    ignoreHTTPSErrors: true, bypassCSP: true,
  });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    await page.goto(`${base}/?lang=en`);
    out.sign_in_shown = await page.locator('input#token').count() === 1;
    await axe(page, 'sign-in', out);

    await page.fill('#token', 'tau_not-a-real-token');
    await page.click('button[type=submit]');
    out.bad_token_refused = (await page.locator('[role=alert]').count()) === 1;

    await page.fill('#token', token);
    await page.click('button[type=submit]');
    await page.waitForSelector('h1');
    out.drills = await page.$$eval('tr[data-drill]', (rows) => rows.map((r) => ({
      id: r.getAttribute('data-drill'), text: r.innerText })));
    out.attention = await page.$$eval('table caption', (c) => c.map((x) => x.innerText));
    out.forms_on_overview = await page.locator('form').count();
    out.audit_state = await page.locator('#audit-state').innerText();
    await axe(page, 'overview-en', out);
    await page.goto(`${base}/?lang=de`);
    out.html_lang_de = await page.getAttribute('html', 'lang');
    await axe(page, 'overview-de', out);

    // Open every report link, as a person would, in both languages.
    for (const lang of ['en', 'de']) {
      await page.goto(`${base}/?lang=${lang}`);
      const links = await page.$$eval('#drills a', (as) => as.map((a) => a.getAttribute('href'))
        .filter((h) => !h.endsWith('.json')));
      for (const href of links) {
        await page.goto(`${base}/`);
        await page.goto(`${base}/?lang=${lang}`);
        await page.click(`#drills a[href="${href}"]`);
        await page.waitForSelector('h1');
        const h1 = await page.locator('h1').innerText();
        const body = await page.locator('main').innerText();
        out.reports.push({ href, lang, h1, status: 200,
          verdict: /NICHT BESTANDEN|FAIL/.test(body) ? 'FAIL' : (/BESTANDEN|PASS/.test(body) ? 'PASS' : '?') });
        await axe(page, `report-${lang}-${href}`, out);
      }
    }
    const json = await page.request.get(`${base}/${out.drills.length ? `reports/${out.drills[0].id}.json` : 'none'}`);
    out.json_status = json.status();
    out.json_signed = json.ok() && !!(await json.json()).signature;

    await page.goto(`${base}/audit?lang=en`);
    out.audit_rows = await page.locator('tbody tr, table tr').count() - 1;
    await axe(page, 'audit-en', out);

    // Nothing here can change anything: writes are refused, with the signed-in session.
    for (const p of ['/policy', '/restore', '/drill', '/reports/x', '/']) {
      const r = await page.request.post(`${base}${p}`, { data: 'x=1' });
      out.refused_posts[p] = r.status();
    }
    const cross = await page.request.post(`${base}/login`, {
      headers: { Origin: 'https://elsewhere.example' }, form: { token } });
    out.cross_site_sign_in = cross.status();
    for (const m of ['PUT', 'DELETE', 'PATCH']) {
      const r = await page.request.fetch(`${base}/`, { method: m });
      out.refused_posts[`${m} /`] = r.status();
    }
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e && e.stack || String(e)); process.exit(2); });
