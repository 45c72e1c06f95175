// The treasury console in a real browser: Debian's Chromium, headless, driven by Playwright
// (playwright-core: no browser download of its own), presenting the admin identity's PKCS#12
// file through Playwright's `clientCertificates`. Run by tests/console.rs, which starts the
// daemon, prepares what the pages act on, and checks what this script reports against the
// daemon's own state.
//
//   node browser.mjs <settings.json>
//
// The settings name the daemon's addresses, the certificates, the day to settle, the parked
// event to replay and the acquirer's file; this script writes `results.json` and a screenshot
// of every page into `settings.out`, and exits non-zero at the first step that goes wrong.
import { chromium, request } from "playwright-core";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const settings = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = settings.out;
const results = { pages: {}, consoleErrors: [] };
/** The page a failure is shown from (its screenshot and HTML are kept). */
let current = null;
const STEP_MS = 20_000;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: settings.chromium,
  headless: true,
  timeout: 60_000,
  // As this machine runs Chromium: as root, no sandbox; nothing fetched from the network.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/** A browser context presenting `cert` to the admin listener. */
async function context(cert, viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({
    viewport,
    // The daemon's server certificate comes from the test's own CA.
    ignoreHTTPSErrors: true,
    clientCertificates: [{ origin: settings.admin_url, ...cert }],
    acceptDownloads: true,
  });
  ctx.setDefaultTimeout(STEP_MS);
  return ctx;
}

const adminCert = { pfxPath: settings.p12, passphrase: settings.passphrase };
const admin2Cert = { certPath: settings.admin2_cert, keyPath: settings.admin2_key };
const partnerCert = { certPath: settings.partner_cert, keyPath: settings.partner_key };

function watch(page, who) {
  page.on("console", (m) => {
    if (m.type() === "error") results.consoleErrors.push(`${who}: ${m.text()}`);
  });
  page.on("pageerror", (e) => results.consoleErrors.push(`${who}: ${e.message}`));
  // Confirmation dialogs (forms with data-confirm) are accepted.
  page.on("dialog", (d) => d.accept());
}

async function shot(page, name) {
  const path = join(out, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

async function notice(page) {
  const n = page.locator(".notice").first();
  return (await n.count()) ? (await n.innerText()).trim() : "";
}

try {
  // 1. A partner's certificate is refused on the admin listener: no page, a 403.
  {
    const ctx = await context(partnerCert);
    const page = await ctx.newPage();
    const resp = await page.goto(`${settings.admin_url}/console/rates`);
    results.partnerRefused = { status: resp.status(), body: (await page.content()).slice(0, 500) };
    check(resp.status() === 403, `partner certificate answered ${resp.status()}`);
    await ctx.close();
  }

  const ctx = await context(adminCert);
  const page = await ctx.newPage();
  current = page;
  watch(page, "admin");

  // 2. Every page opens, with its policy headers, and is saved as a screenshot.
  const pages = ["rates", "spreads", "positions", "settlement", "operations", "proposals", "risk", "audit"];
  for (const name of pages) {
    const resp = await page.goto(`${settings.admin_url}/console/${name}`);
    const h = resp.headers();
    results.pages[name] = {
      status: resp.status(),
      h1: (await page.locator("h1").innerText()).trim(),
      current: await page.locator('nav.main a[aria-current="page"]').innerText(),
      csp: h["content-security-policy"] || "",
      cacheControl: h["cache-control"] || "",
      overflowX: await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth),
      screenshot: await shot(page, `desktop-${name}`),
    };
    check(resp.status() === 200, `${name} answered ${resp.status()}`);
  }
  // The root sends to the first page.
  await page.goto(`${settings.admin_url}/console/`);
  results.root = new URL(page.url()).pathname;

  // 3. The keyboard: the first Tab reaches the skip link, and following it focuses the page.
  await page.goto(`${settings.admin_url}/console/spreads`);
  await page.keyboard.press("Tab");
  results.firstTab = await page.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
  await page.keyboard.press("Enter");
  results.afterSkip = await page.evaluate(() => document.activeElement && document.activeElement.id);

  // 4. A spread edited through its preview and confirmation; a new quote priced with it.
  await page.selectOption("#spread-partner", settings.partner);
  await page.selectOption("#spread-pair", settings.pair);
  await page.fill("#spread-bps", settings.small_bps);
  await page.fill("#spread-sample", settings.sample_cny);
  await page.getByRole("button", { name: "Preview the change" }).click();
  await page.waitForURL(/\/console\/spreads\/preview$/);
  results.spread = {
    previewTitle: (await page.locator("h1").innerText()).trim(),
    priceBefore: (await page.locator("#sample-price-before").innerText()).trim(),
    priceAfter: (await page.locator("#sample-price-after").innerText()).trim(),
    walletAfter: (await page.locator("#sample-wallet-after").innerText()).trim(),
    previewNotice: await notice(page),
    previewShot: await shot(page, "desktop-spread-preview"),
  };
  await page.locator("#confirm-spread").click();
  await page.waitForURL(/\/console\/spreads$/);
  results.spread.notice = await notice(page);
  check(/in force/.test(results.spread.notice), `spread not in force: ${results.spread.notice}`);
  {
    const partner = await request.newContext({
      ignoreHTTPSErrors: true,
      clientCertificates: [{ origin: settings.partner_url, ...partnerCert }],
    });
    const q = await partner.post(`${settings.partner_url}/v1/quotes`, {
      data: { code: settings.code, wallet_currency: settings.pair.split("/")[1], amount: { currency: "CNY", value: settings.sample_fen } },
    });
    const body = await q.json();
    results.spread.quoteStatus = q.status();
    results.spread.quotePrice = body.rate && body.rate.price;
    results.spread.quoteWallet = body.wallet_amount;
    await partner.dispose();
    check(q.status() === 201, `quote answered ${q.status()}: ${JSON.stringify(body)}`);
  }

  // 5. A change under dual control: proposed by this admin, who cannot approve it; another
  //    admin approves it.
  await page.goto(`${settings.admin_url}/console/spreads?partner=${settings.partner}&pair=${encodeURIComponent(settings.pair)}`);
  await page.fill("#spread-bps", settings.large_bps);
  await page.getByRole("button", { name: "Preview the change" }).click();
  results.proposal = { previewNotice: await page.locator(".notice.warn").first().innerText() };
  await page.locator("#confirm-spread").click();
  results.proposal.notice = await notice(page);
  check(/Proposed/.test(results.proposal.notice), `not proposed: ${results.proposal.notice}`);
  await page.goto(`${settings.admin_url}/console/proposals`);
  const own = page.locator("article[data-proposal]").first();
  results.proposal.id = await own.getAttribute("data-proposal");
  results.proposal.ownText = await own.innerText();
  results.proposal.approveDisabled = await own.getByRole("button", { name: "Approve" }).isDisabled();
  results.proposal.navCount = (await page.locator("nav.main .count").innerText()).trim();
  results.proposal.ownShot = await shot(page, "desktop-proposals-own");
  {
    const ctx2 = await context(admin2Cert);
    const page2 = await ctx2.newPage();
    watch(page2, "admin-2");
    await page2.goto(`${settings.admin_url}/console/proposals`);
    const card = page2.locator(`article[data-proposal="${results.proposal.id}"]`);
    await card.locator("textarea").fill("checked with treasury desk");
    await card.getByRole("button", { name: "Approve" }).click();
    await page2.waitForURL(/\/console\/proposals\/approve$/);
    results.proposal.approved = await notice(page2);
    await shot(page2, "desktop-proposals-approved");
    await ctx2.close();
  }

  // 6. A settlement day run, and one of its files downloaded.
  await page.goto(`${settings.admin_url}/console/settlement`);
  await page.fill("#run-day", settings.day);
  await page.getByRole("button", { name: "Run the day" }).click();
  await page.waitForURL(/\/console\/settlement\/run$/);
  results.settlement = { notice: await notice(page), title: (await page.locator("h1").innerText()).trim() };
  check(/run/.test(results.settlement.notice), `day not run: ${results.settlement.notice}`);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.locator(`a[download]`, { hasText: settings.statement }).first().click(),
  ]);
  results.settlement.downloadName = download.suggestedFilename();
  results.settlement.downloaded = join(out, `downloaded-${download.suggestedFilename()}`);
  await download.saveAs(results.settlement.downloaded);
  await shot(page, "desktop-settlement-day");

  // 7. The acquirer's file uploaded and reconciled: the verdicts as a table.
  await page.selectOption("#recon-acquirer", settings.acquirer);
  await page.setInputFiles("#recon-file", settings.acquirer_file);
  await page.getByRole("button", { name: "Reconcile" }).click();
  await page.waitForURL(/\/console\/settlement\/reconcile$/);
  results.reconcile = {
    notice: await notice(page),
    verdicts: await page.locator(`#verdicts-${settings.acquirer} tbody tr td:nth-child(2)`).allInnerTexts(),
    instructions: await page.locator(`#verdicts-${settings.acquirer} tbody tr td:nth-child(1)`).allInnerTexts(),
    screenshot: await shot(page, "desktop-settlement-reconciled"),
  };

  // 8. A parked webhook event replayed: it leaves the parked list.
  await page.goto(`${settings.admin_url}/console/operations`);
  results.replay = { listedBefore: await page.locator(`#parked-table tr[data-event="${settings.parked_event}"]`).count() };
  await page.locator(`#parked-table tr[data-event="${settings.parked_event}"]`).getByRole("button", { name: /Replay/ }).click();
  await page.waitForURL(/\/console\/operations\/replay$/);
  results.replay.notice = await notice(page);
  results.replay.listedAfter = await page.locator(`#parked-table tr[data-event="${settings.parked_event}"]`).count();
  await shot(page, "desktop-operations-replayed");

  // 9. Changes refused without the console's token, or from another origin.
  {
    const api = ctx.request;
    const noToken = await api.post(`${settings.admin_url}/console/rates`, {
      form: { base: "USD", quote: "PHP", rate: "1" },
      headers: { origin: settings.admin_url },
      maxRedirects: 0,
    });
    await page.goto(`${settings.admin_url}/console/rates`);
    const token = await page.locator('input[name="csrf"]').first().getAttribute("value");
    const evil = await api.post(`${settings.admin_url}/console/rates`, {
      form: { csrf: token, base: "USD", quote: "PHP", rate: "1" },
      headers: { origin: "https://evil.example" },
      maxRedirects: 0,
    });
    const noOrigin = await api.post(`${settings.admin_url}/console/rates`, {
      form: { csrf: token, base: "USD", quote: "PHP", rate: "1" },
      maxRedirects: 0,
    });
    // The same request with the token and from the console's origin passes the guard (a preview:
    // nothing changes), so the refusals above are the guard's, not the listener's.
    const accepted = await api.post(`${settings.admin_url}/console/spreads/preview`, {
      form: { csrf: token, partner: "", pair: "", bps: "50" },
      headers: { origin: settings.admin_url },
      maxRedirects: 0,
    });
    const title = async (r) => ((await r.text()).match(/<title>([^<]*)<\/title>/) || [null, ""])[1];
    results.csrf = {
      noToken: noToken.status(), evilOrigin: evil.status(), noOrigin: noOrigin.status(),
      titles: [await title(noToken), await title(evil), await title(noOrigin)],
      accepted: accepted.status(), acceptedTitle: await title(accepted),
    };
  }

  // 10. The audit page after it all; every page at a phone's width.
  await page.goto(`${settings.admin_url}/console/audit`);
  results.audit = { chain: (await page.locator("#chain-state").innerText()).trim(), screenshot: await shot(page, "desktop-audit") };
  await page.goto(`${settings.admin_url}/console/positions`);
  results.positionsChart = await page.locator("figure.chart svg").count();
  await shot(page, "desktop-positions");
  await page.goto(`${settings.admin_url}/console/rates`);
  await shot(page, "desktop-rates");
  const phone = await context(adminCert, { width: 390, height: 844 });
  const small = await phone.newPage();
  watch(small, "phone");
  results.phone = {};
  for (const name of pages) {
    await small.goto(`${settings.admin_url}/console/${name}`);
    results.phone[name] = {
      overflowX: await small.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1),
      screenshot: await shot(small, `phone-${name}`),
    };
  }
  await phone.close();
  await ctx.close();
} catch (e) {
  results.error = String(e && e.stack ? e.stack : e);
  if (current) {
    results.failedAt = current.url();
    await current.screenshot({ path: join(out, "failure.png"), fullPage: true }).catch(() => {});
    writeFileSync(join(out, "failure.html"), await current.content().catch(() => ""));
  }
} finally {
  writeFileSync(join(out, "results.json"), JSON.stringify(results, null, 2));
  await browser.close();
}
if (results.error) {
  console.error(results.error);
  process.exit(1);
}
console.log(`console browser test: every step done; screenshots in ${out}`);
