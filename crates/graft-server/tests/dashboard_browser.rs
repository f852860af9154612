//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`'s WebDriver API on 127.0.0.1): sign in through the form, open a halted
//! rollout, check what the browser rendered, and keep a screenshot of it as an artifact
//! (`target/artifacts/dashboard-halted-rollout.png`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

#[path = "suites/rollouts.rs"]
mod rollouts;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::Db;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver the test started, stopped by its PID when dropped.
struct Driver {
    child: Child,
    base: String,
    http: ureq::Agent,
}

impl Driver {
    fn start() -> Self {
        for binary in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver (scripts/setup.sh does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            (_, body) => self.http.post(&url).send_json(body.unwrap_or(json!({}))),
        }
        .unwrap();
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {path}: {value}");
        value["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver) -> Self {
        let made = driver.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1360,2200"]
                }
            }}})),
        );
        Self {
            driver,
            session: made["sessionId"].as_str().unwrap().to_string(),
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.driver
            .call("POST", &self.path("/url"), Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> Vec<String> {
        let found = self.driver.call(
            "POST",
            &self.path("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("no element reference in {e}"))
                    .to_string()
            })
            .collect()
    }

    fn text_of(&self, element: &str) -> String {
        self.driver
            .call("GET", &self.path(&format!("/element/{element}/text")), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn title(&self) -> String {
        self.driver
            .call("GET", &self.path("/title"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits for the page titled `expected`: a click that submits a form returns before the
    /// browser has loaded the page the form leads to, so the title is polled. On a timeout
    /// the page's text says why (a sign-in refused shows its reason).
    fn wait_for_title(&self, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let title = self.title();
            if title == expected {
                return;
            }
            if Instant::now() > deadline {
                let body = self.text_of(&self.find("body")[0]);
                panic!("the page is still {title:?}, not {expected:?}; it reads: {body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.driver.call("GET", &self.path("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .http
            .delete(format!("{}/session/{}", self.driver.base, self.session))
            .call();
    }
}

#[test]
fn a_halted_rollout_in_a_real_browser() {
    let (fleet, server, rollout) = rollouts::halted_rollout(Db::Sqlite);
    let viewer = server.http.token(&fleet.admin, "browser", "viewer");
    let base = format!("http://127.0.0.1:{}", server.addr().port());
    let driver = Driver::start();
    let browser = Browser::open(&driver);

    // Signed out, the dashboard sends to the form; sign in through it.
    browser.go(&format!("{base}/"));
    browser.wait_for_title("Sign in · graft fleet");
    let field = &browser.find("input[name=token]")[0];
    driver.call(
        "POST",
        &browser.path(&format!("/element/{field}/value")),
        Some(json!({ "text": viewer })),
    );
    let submit = &browser.find("button[type=submit]")[0];
    driver.call(
        "POST",
        &browser.path(&format!("/element/{submit}/click")),
        None,
    );
    browser.wait_for_title("Rollouts · graft fleet");
    let listed = browser.text_of(&browser.find("#rollouts")[0]);
    assert!(
        listed.contains(&rollout.id) && listed.contains("halted"),
        "{listed}"
    );

    // The halted rollout: its reason, its chart, the halting decision.
    browser.go(&format!("{base}/rollouts/{}", rollout.id));
    browser.wait_for_title(&format!("Rollout {} · graft fleet", rollout.id));
    let reason = browser.text_of(&browser.find("#reason")[0]);
    assert!(
        reason.contains("tcp_retransmits is higher on treated hosts"),
        "{reason}"
    );
    // A chart per metric the hosts report (here, one).
    assert_eq!(browser.find("svg.chart").len(), 1);
    assert_eq!(
        browser
            .find("svg.chart[data-metric=tcp_retransmits] polyline.treatment")
            .len(),
        1
    );
    let decisions = browser.text_of(&browser.find("#decisions")[0]);
    assert!(
        decisions.contains("halt")
            && decisions.contains("metric")
            && decisions.contains("10 vs 30"),
        "{decisions}"
    );

    // The artifact.
    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1360, "the window's width");
    let out = artifacts().join("dashboard-halted-rollout.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
}

/// `target/artifacts`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
