//! The command line as an operator meets it: zero-configuration start, tokens, and
//! one-line startup errors.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wealthdesk");

/// The binary in `dir` with no WEALTHDESK_* variables from the outer environment.
fn wealthdesk(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env_clear().env("RUST_LOG", "warn");
    command.kill_on_drop(true);
    command
}

async fn output(command: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn zero_configuration_serve_creates_its_data_and_accepts_issued_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = wealthdesk(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the service reports its address")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("wealthdesk listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    wealthdesk::install_crypto_provider();
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(dir.path().join("data/wealthdesk.db").is_file());
    assert!(dir.path().join("data/dev-jwt-secret").is_file());

    let (code, token, _) = output(wealthdesk(dir.path()).args([
        "token",
        "issue",
        "--role",
        "client",
        "--sub",
        "demo-client",
        "--ttl",
        "30m",
    ]))
    .await;
    assert_eq!(code, 0);
    let created = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the service stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("development"),
        "the development key is announced: {stderr}"
    );
}

#[tokio::test]
async fn a_malformed_config_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wealthdesk.toml"), "[http]\nhsts = tru\n").unwrap();
    let (code, _, stderr) = output(wealthdesk(dir.path()).args(["config", "check"])).await;
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("wealthdesk.toml"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_value_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.toml");
    std::fs::write(&file, "[http]\nmax_body_bytes = \"big\"\n").unwrap();
    let (code, _, stderr) = output(wealthdesk(dir.path()).args([
        "--config",
        file.to_str().unwrap(),
        "config",
        "check",
    ]))
    .await;
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("http.max_body_bytes"), "{stderr}");
    assert!(stderr.contains("custom.toml"), "{stderr}");

    let (code, _, stderr) =
        output(wealthdesk(dir.path()).args(["--config", "missing.toml", "config", "check"])).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("missing.toml") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wealthdesk.toml"),
        "listen = \"127.0.0.1:9100\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = output(
        wealthdesk(dir.path())
            .env(
                "WEALTHDESK_AUTH__JWT_SECRET",
                "a-very-secret-value-of-more-than-32-bytes",
            )
            .env(
                "WEALTHDESK_DATABASE_URL",
                "postgres://wd:hunter2@db.internal:5432/wd",
            )
            .args(["config", "check"]),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("listen = \"127.0.0.1:9100\""), "{stdout}");
    assert!(
        stdout.contains("postgres://wd:***@db.internal:5432/wd"),
        "{stdout}"
    );
    assert!(stdout.contains("jwt_secret = \"[redacted]\""), "{stdout}");
    assert!(
        !stdout.contains("a-very-secret") && !stdout.contains("hunter2"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_fails_fast_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, _, stderr) = output(
        wealthdesk(dir.path())
            .env(
                "WEALTHDESK_DATABASE_URL",
                "postgres://wd:topsecret@127.0.0.1:1/wd",
            )
            .env("WEALTHDESK_DATABASE__ACQUIRE_TIMEOUT_SECS", "2")
            .args(["serve", "--listen", "127.0.0.1:0"]),
    )
    .await;
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        stderr
            .trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("topsecret"), "{stderr}");
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (code, stdout, stderr) = output(wealthdesk(dir.path()).arg("migrate")).await;
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("migrations applied"));
    }
    assert!(dir.path().join("data/wealthdesk.db").is_file());
}

#[tokio::test]
async fn token_issue_refuses_an_unknown_role() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) =
        output(wealthdesk(dir.path()).args(["token", "issue", "--role", "root", "--sub", "x"]))
            .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown role"), "{stderr}");
}

#[tokio::test]
async fn a_broken_questionnaire_stops_startup_naming_file_and_question() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("packs");
    std::fs::create_dir(&packs).unwrap();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/questionnaires/cn-fund-risk.toml"),
    )
    .unwrap();
    // The question on the largest acceptable loss loses its English text.
    let broken = shipped.replacen(
        "en = \"What is the largest loss you could accept on your investment, as a share of the amount invested?\"",
        "en = \"\"",
        1,
    );
    assert_ne!(broken, shipped);
    std::fs::write(packs.join("cn-fund-risk.toml"), broken).unwrap();
    let (code, _, stderr) = output(
        wealthdesk(dir.path())
            .env("WEALTHDESK_QUESTIONNAIRE__DIR", packs.to_str().unwrap())
            .args(["serve", "--listen", "127.0.0.1:0"]),
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains("cn-fund-risk.toml"), "{stderr}");
    assert!(
        line.contains("question max_loss"),
        "the question is named: {stderr}"
    );
    assert!(
        line.contains("no en translation"),
        "the problem is named: {stderr}"
    );

    let (code, _, stderr) = output(
        wealthdesk(dir.path())
            .env("WEALTHDESK_QUESTIONNAIRE__PACK", "no-such-pack")
            .args(["serve", "--listen", "127.0.0.1:0"]),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("questionnaire.pack") && stderr.contains("no-such-pack"),
        "{stderr}"
    );
}

#[tokio::test]
async fn archive_verify_passes_a_clean_archive_and_fails_naming_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = output(wealthdesk(dir.path()).args(["migrate"])).await;
    assert_eq!(code, 0, "{err}");
    // A conversation written through the service's own write path.
    let overrides = wealthdesk::config::CliOverrides {
        data_dir: Some(dir.path().join("data")),
        ..Default::default()
    };
    let config = wealthdesk::config::Config::load_from(&overrides, &[]).unwrap();
    let db = wealthdesk::db::Db::connect(&config).await.unwrap();
    wealthdesk::im::store::fill_for_bench(&db, 2, 3)
        .await
        .unwrap();
    let (code, out, err) = output(wealthdesk(dir.path()).args(["archive", "checkpoint"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("checkpoint 1: 6 records in 2 chains"),
        "{out}"
    );
    let (code, out, err) = output(wealthdesk(dir.path()).args(["archive", "verify"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: nothing was altered"), "{out}");

    let conversation: String =
        sqlx::query_scalar("SELECT conversation_id FROM messages ORDER BY conversation_id LIMIT 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
    sqlx::query("UPDATE messages SET body = '{}' WHERE conversation_id = $1 AND seq = 2")
        .bind(&conversation)
        .execute(db.pool())
        .await
        .unwrap();
    let (code, out, err) =
        output(wealthdesk(dir.path()).args(["archive", "verify", "--json"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("1 altered record(s) found"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["problems"][0]["problem"], "edited");
    assert_eq!(
        report["problems"][0]["chain"],
        format!("conversation:{conversation}")
    );
    assert_eq!(report["problems"][0]["record"], "message:2");

    // An export cut short is named as such, not trusted.
    let other: String = sqlx::query_scalar(
        "SELECT conversation_id FROM messages WHERE conversation_id <> $1 LIMIT 1",
    )
    .bind(&conversation)
    .fetch_one(db.pool())
    .await
    .unwrap();
    db.close().await;
    let file = dir.path().join("export.jsonl");
    let (code, out, err) = output(wealthdesk(dir.path()).args([
        "archive",
        "export",
        "--conversation",
        &other,
        "--out",
        file.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    // Cut mid-line, as a failed copy would.
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    let partial: String = lines[half].chars().take(10).collect();
    std::fs::write(&file, format!("{}\n{partial}", lines[..half].join("\n"))).unwrap();
    let (code, out, _) = output(wealthdesk(dir.path()).args([
        "archive",
        "verify",
        "--export",
        file.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("export_truncated"), "{out}");
}

#[tokio::test]
async fn a_broken_archive_key_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/archive-signing-key"), "not a key\n").unwrap();
    let (code, _, stderr) =
        output(wealthdesk(dir.path()).args(["serve", "--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("archive-signing-key"), "{stderr}");
    assert!(stderr.contains("64 hex characters"), "{stderr}");
}
