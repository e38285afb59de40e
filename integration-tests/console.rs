//! `riskstream console` in a real headless Chromium (Debian's chromium and
//! chromedriver, driven over WebDriver): every page against what a real run
//! stored, a decision labelled by clicking, and what landed in Postgres.

use crate::common::{url_as, World, REVIEWER};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sqlx::Row;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16, what: &str, log: &Path) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(program: &str, args: &[&str], log: &Path) -> Process {
    let file = std::fs::File::create(log).unwrap();
    Process(
        Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e} (make setup installs it)")),
    )
}

/// Headless Chromium behind chromedriver, with the flags this machine's
/// closed network needs.
pub struct Browser {
    pub client: Client,
    _driver: Process,
}

impl Browser {
    pub async fn start(dir: &Path) -> Browser {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let driver = spawn("chromedriver", &[&format!("--port={port}")], &log);
        wait_for_port(port, "chromedriver", &log).await;
        let profile = dir.join("chromium-profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver starts a Chromium session");
        Browser {
            client,
            _driver: driver,
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The texts of a column of the table's rows (1-based).
    pub async fn column(&self, rows_css: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for row in self.client.find_all(Locator::Css(rows_css)).await.unwrap() {
            let cell = row
                .find(Locator::Css(&format!("td:nth-child({n})")))
                .await
                .unwrap();
            out.push(cell.text().await.unwrap());
        }
        out
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn log_in(&self, base: &str, name: &str, password: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.fill("input[name=name]", name).await;
        self.fill("input[name=password]", password).await;
        self.click("form.login button").await;
        self.wait_for("#viewer, [role=alert]").await;
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Wait (up to 20 s) for a page showing `css`: a click that submits a
    /// form returns before the next page has loaded.
    pub async fn wait_for(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} within 20 s: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_reviews_and_labels_in_a_real_browser() {
    let world = World::new("console", 2).await;
    let port = free_port();
    let hash = |p: &str| riskstream::console::hash_password(p).unwrap();
    // The engine ignores [console]; one file serves both.
    let config = world.config_path.clone();
    std::fs::write(
        &config,
        world
            .config_text(
                2,
                &format!(
                    r#"
[console]
listen = "127.0.0.1:{port}"
url = "{url}"

[[console.users]]
name = "alice"
role = "reviewer"
password_hash = "{alice}"

[[console.users]]
name = "bob"
role = "read-only"
password_hash = "{bob}"
"#,
                    url = url_as(REVIEWER, &world.name),
                    alice = hash("alice-pw"),
                    bob = hash("bob-pw"),
                ),
            )
            // Enough decisions in review for a queue page and a filter.
            .replace(
                "review = 0.5\ndecline = 0.9",
                "review = 0.05\ndecline = 0.9",
            ),
    )
    .unwrap();
    world.produce_simulated(4_000, 5);
    let mut engine = world.start_engine("console");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(240))
        .await;
    assert!(engine.terminate().success());

    let log = world.dir.path().join("console.log");
    let _console = spawn(
        env!("CARGO_BIN_EXE_riskstream"),
        &["--config", config.to_str().unwrap(), "console"],
        &log,
    );
    wait_for_port(port, "the console", &log).await;
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::start(world.dir.path()).await;

    // Not logged in: the queue sends to the login page; a wrong password stays there.
    b.client.goto(&format!("{base}/queue")).await.unwrap();
    assert_eq!(b.path().await, "/login");
    b.log_in(&base, "alice", "wrong").await;
    assert_eq!(b.text("[role=alert]").await, "Wrong name or password.");
    b.log_in(&base, "alice", "alice-pw").await;
    assert_eq!(b.path().await, "/queue");
    assert_eq!(b.text("#viewer").await, "alice · reviewer");

    // A decision whose id is markup, quotes, a slash and non-ASCII (ids
    // come from another team's stream): a copy of the newest review, a
    // second later.
    let hostile = "<b>x</b>\"'/é&amp;";
    let source: String = sqlx::query_scalar(
        "SELECT tx_id FROM risk_decisions WHERE decision = 'review'
          ORDER BY ts DESC, tx_id DESC LIMIT 1",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    let later = "jsonb_build_object('tx_id', $1, 'ts', d.ts + interval '1 second')";
    for table in ["decision_ids", "risk_decisions", "attention_explanations"] {
        sqlx::query(&format!(
            "INSERT INTO {table}
             SELECT (jsonb_populate_record(d, {later})).* FROM {table} d WHERE d.tx_id = $2"
        ))
        .bind(hostile)
        .bind(&source)
        .execute(&world.pool)
        .await
        .unwrap();
    }

    // The queue is the review decisions, newest first, 50 a page.
    let newest: Vec<String> = sqlx::query_scalar(
        "SELECT tx_id FROM risk_decisions WHERE decision = 'review'
          ORDER BY ts DESC, tx_id DESC LIMIT 50",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert!(
        newest.len() >= 20,
        "the run left too few reviews: {}",
        newest.len()
    );
    b.client.goto(&format!("{base}/queue")).await.unwrap();
    assert_eq!(b.column("table.queue tbody tr", 2).await, newest);
    assert_eq!(newest[0], hostile, "the copy is the newest");
    // Its link leads to its page, where the id reads as it is.
    b.click("table.queue tbody tr:first-child a.tx").await;
    b.wait_for("#feature-attention").await;
    assert_eq!(b.text("h1 .tx").await, hostile);
    b.client.goto(&format!("{base}/queue")).await.unwrap();

    // Filtered by channel through the form: only that channel, as many as SQL says.
    let ecom: Vec<String> = sqlx::query_scalar(
        "SELECT tx_id FROM risk_decisions WHERE decision = 'review' AND channel = 'ecom'
          ORDER BY ts DESC, tx_id DESC LIMIT 50",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    b.click("select[name=channel] option[value=ecom]").await;
    b.click("form.filters button").await;
    b.wait_for("option[value=ecom][selected]").await;
    assert_eq!(b.column("table.queue tbody tr", 2).await, ecom);
    assert!(b
        .column("table.queue tbody tr", 5)
        .await
        .iter()
        .all(|c| c == "ecom"));
    // A bad filter is named, not a blank page.
    b.client
        .goto(&format!("{base}/queue?min_score=lots"))
        .await
        .unwrap();
    assert!(b.text(".problems").await.contains("minimum score"));

    // A decision without a label from the stream: its page shows the
    // model's view, as stored.
    let row = sqlx::query(
        "SELECT d.tx_id, m.feature_names[(SELECT i FROM unnest(e.feature_weights) WITH ORDINALITY u(w, i)
                                           ORDER BY w DESC LIMIT 1)],
                cardinality(m.feature_names),
                (SELECT count(*) FROM unnest(e.history_tx_ids) h WHERE h IS NOT NULL),
                date_trunc('day', d.ts)::date
           FROM risk_decisions d JOIN attention_explanations e USING (tx_id)
           JOIN model_versions m ON m.name = d.model_name AND m.version = d.model_version
          WHERE d.decision = 'review' AND NOT EXISTS (SELECT FROM labels l WHERE l.tx_id = d.tx_id)
            AND e.history_tx_ids[1] IS NOT NULL AND d.tx_id NOT LIKE '<%'
          ORDER BY d.ts DESC LIMIT 1",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    let (tx, top_feature, features, history): (String, String, i32, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let day: chrono::NaiveDate = row.get(4);
    b.client.goto(&format!("{base}/queue")).await.unwrap();
    if b.count(&format!("a.tx[href='/decisions/{tx}']")).await > 0 {
        b.click(&format!("a.tx[href='/decisions/{tx}']")).await;
        b.wait_for("#feature-attention").await;
    } else {
        b.client
            .goto(&format!("{base}/decisions/{tx}"))
            .await
            .unwrap();
    }
    assert_eq!(b.path().await, format!("/decisions/{tx}"));
    assert_eq!(
        b.count("#feature-attention tbody tr").await,
        features as usize
    );
    assert_eq!(
        b.text("#feature-attention tbody tr:first-child td:first-child")
            .await,
        top_feature,
        "the most attended feature comes first"
    );
    assert_eq!(b.count("#history tbody tr").await, history as usize);
    assert_eq!(b.count("svg.timeline circle").await, history as usize);
    assert_eq!(b.text("#label-in-force").await, "none yet");

    let true_alerts = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT sum(true_alerts)::bigint FROM alert_quality_by_version WHERE day = $1",
        )
        .bind(day)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = true_alerts(world.pool.clone()).await;

    // Label it fraud, by clicking.
    b.fill("input[name=note]", "card holder confirmed: not them")
        .await;
    b.click("button[value=fraud]").await;
    b.wait_for("#labelled").await;
    assert!(b
        .text("#labelled")
        .await
        .starts_with("Your label is recorded."));
    let in_force = b.text("#label-in-force").await;
    assert!(
        in_force.starts_with("fraud") && in_force.contains("review by alice"),
        "{in_force}"
    );
    let rows = sqlx::query(
        "SELECT is_fraud, reviewer, note, reviewed_at > now() - interval '5 minutes'
           FROM label_reviews WHERE tx_id = $1 ORDER BY id",
    )
    .bind(&tx)
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<bool, _>(0));
    assert_eq!(rows[0].get::<String, _>(1), "alice");
    assert_eq!(
        rows[0].get::<String, _>(2),
        "card holder confirmed: not them"
    );
    assert!(rows[0].get::<bool, _>(3));
    // Alert quality sees it: a review without a label became a true alert.
    assert_eq!(true_alerts(world.pool.clone()).await, before + 1);

    // A relabel is a second audit row; the first stays.
    b.click("button[value=legitimate]").await;
    b.wait_for("#reviews tbody tr:nth-child(2)").await;
    let labels: Vec<(bool, String)> =
        sqlx::query_as("SELECT is_fraud, reviewer FROM label_reviews WHERE tx_id = $1 ORDER BY id")
            .bind(&tx)
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(labels, [(true, "alice".into()), (false, "alice".into())]);
    let (fraud, source): (bool, String) =
        sqlx::query_as("SELECT is_fraud, source FROM labels_in_force WHERE tx_id = $1")
            .bind(&tx)
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!((fraud, source.as_str()), (false, "review"));
    assert_eq!(b.count("#reviews tbody tr").await, 2);
    assert_eq!(true_alerts(world.pool.clone()).await, before);

    // Alert quality: one table row per day and version, as the view has, and three charts.
    b.client.goto(&format!("{base}/quality")).await.unwrap();
    let (first, last): (chrono::NaiveDate, chrono::NaiveDate) =
        sqlx::query_as("SELECT min(ts)::date, max(ts)::date FROM risk_decisions")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!(
        b.client
            .find(Locator::Css("input[name=to]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(last.to_string().as_str()),
        "the range ends on the last day with decisions"
    );
    b.client
        .goto(&format!("{base}/quality?from={first}&to={last}"))
        .await
        .unwrap();
    let view_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_quality_by_version")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(b.count("#quality tbody tr").await, view_rows as usize);
    assert_eq!(b.count("svg.chart").await, 3);

    // What-if: the candidate's alerts at review 0.3 are the stored scores at
    // or above 0.3 (this world has no rules and no channel overrides).
    b.client
        .goto(&format!("{base}/what-if?from={first}&to={last}&review=0.3"))
        .await
        .unwrap();
    let (in_force, candidate): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE decision <> 'approve'), count(*) FILTER (WHERE score >= 0.3)
           FROM risk_decisions",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    let first_row = b.column("#what-if tbody tr:first-child", 2).await;
    assert_eq!(first_row, [in_force.to_string()]);
    assert_eq!(
        b.column("#what-if tbody tr:first-child", 3).await,
        [candidate.to_string()]
    );
    assert_eq!(b.count("figure svg").await, 1);

    // A read-only user sees no label form, and a forged label is refused.
    b.click("header .who button").await;
    b.wait_for("form.login").await;
    assert_eq!(b.path().await, "/login");
    b.log_in(&base, "bob", "bob-pw").await;
    b.client
        .goto(&format!("{base}/decisions/{tx}"))
        .await
        .unwrap();
    assert_eq!(b.count(".label-form").await, 0);
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('header .who input[name=csrf]').value;
             fetch(location.pathname + '/label', {method: 'POST',
                   headers: {'content-type': 'application/x-www-form-urlencoded'},
                   body: 'label=fraud&csrf=' + csrf}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM label_reviews")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(n, 2, "the read-only user's label was not stored");

    b.client.clone().close().await.unwrap();
    world.tear_down().await;
}

/// `make screenshots`: the console's pages on what `make demo` stored, for
/// docs/img. Needs a console at RISKSTREAM_CONSOLE_URL with a reviewer login
/// (scripts/screenshots.sh starts one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by `scripts/console.sh --screenshots` against the demo's console"]
async fn screenshots_of_the_demo() {
    let base = std::env::var("RISKSTREAM_CONSOLE_URL").expect("RISKSTREAM_CONSOLE_URL");
    let user = std::env::var("RISKSTREAM_CONSOLE_USER").expect("RISKSTREAM_CONSOLE_USER");
    let password =
        std::env::var("RISKSTREAM_CONSOLE_PASSWORD").expect("RISKSTREAM_CONSOLE_PASSWORD");
    let out = std::path::PathBuf::from(
        std::env::var("RISKSTREAM_SCREENSHOTS").expect("RISKSTREAM_SCREENSHOTS"),
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Browser::start(dir.path()).await;
    let shot = |name: &'static str, height: u32| {
        let (b, out) = (&b, out.clone());
        async move {
            b.client.set_window_size(1280, height).await.unwrap();
            let png = b.client.screenshot().await.unwrap();
            std::fs::write(out.join(name), png).unwrap();
        }
    };
    b.log_in(&base, &user, &password).await;
    shot("console-queue.png", 900).await;
    // The first decision in review with history, labelled by the screenshot's reviewer.
    let href = b
        .client
        .find(Locator::Css("table.queue tbody tr:first-child a.tx"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    b.client.goto(&format!("{base}{href}")).await.unwrap();
    shot("console-decision.png", 1700).await;
    b.client.goto(&format!("{base}/quality")).await.unwrap();
    shot("console-quality.png", 1100).await;
    b.client
        .goto(&format!("{base}/what-if?review=0.3"))
        .await
        .unwrap();
    shot("console-what-if.png", 1100).await;
    b.client.clone().close().await.unwrap();
}

/// One HTTP/1.1 request to the console, as a login proxy would send it:
/// the status and the body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    if let Some(u) = user {
        req.push_str(&format!("x-forwarded-user: {u}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_login_proxy_the_header_names_the_user_and_the_config_their_role() {
    let world = World::new("console_proxy", 1).await;
    let port = free_port();
    std::fs::write(
        &world.config_path,
        world.config_text(
            1,
            &format!(
                r#"
[console]
listen = "127.0.0.1:{port}"
url = "{url}"
auth = "proxy"

[[console.users]]
name = "alice"
role = "reviewer"

[[console.users]]
name = "bob"
role = "read-only"
"#,
                url = url_as(REVIEWER, &world.name),
            ),
        ),
    )
    .unwrap();
    let log = world.dir.path().join("console.log");
    let _console = spawn(
        env!("CARGO_BIN_EXE_riskstream"),
        &["--config", world.config_path.to_str().unwrap(), "console"],
        &log,
    );
    wait_for_port(port, "the console", &log).await;

    let (status, page) = http(port, "GET", "/queue", None, "").await;
    assert_eq!(status, 403);
    assert!(page.contains("did not name a user"), "{page}");
    let (status, page) = http(port, "GET", "/queue", Some("mallory"), "").await;
    assert_eq!(status, 403);
    assert!(page.contains("is not a console user"), "{page}");
    let (status, page) = http(port, "GET", "/queue", Some("alice"), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("alice · reviewer"));
    // No password form behind a proxy.
    let (status, page) = http(port, "GET", "/login", Some("alice"), "").await;
    assert_eq!(status, 303, "{page}");

    let csrf = |page: &str| {
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 32].to_owned()
    };
    let (_, bobs) = http(port, "GET", "/queue", Some("bob"), "").await;
    let (status, _) = http(
        port,
        "POST",
        "/decisions/tx-1/label",
        Some("bob"),
        &format!("label=fraud&csrf={}", csrf(&bobs)),
    )
    .await;
    assert_eq!(status, 403, "read-only");
    let (status, _) = http(
        port,
        "POST",
        "/decisions/tx-1/label",
        Some("alice"),
        &format!("label=fraud&csrf={}", csrf(&bobs)),
    )
    .await;
    assert_eq!(status, 403, "another user's CSRF token");
    let (_, alices) = http(port, "GET", "/queue", Some("alice"), "").await;
    let (status, page) = http(
        port,
        "POST",
        "/decisions/tx-1/label",
        Some("alice"),
        &format!("label=fraud&csrf={}", csrf(&alices)),
    )
    .await;
    assert_eq!(status, 404, "no such decision: {page}");
    assert_eq!(world.count("SELECT count(*) FROM label_reviews").await, 0);
    world.tear_down().await;
}
