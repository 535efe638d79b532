//! The tamper-evident archive: every kind of tampering with the live tables or the
//! archive itself is found and named, on both stores; exports verify offline.

use reqwest::{Method, StatusCode};
use serde_json::json;
use wealthdesk::archive::checkpoint::{self, Signer};
use wealthdesk::archive::records::{MESSAGE_SELECT, MessageRow};
use wealthdesk::archive::verify::{self, Problem};
use wealthdesk::archive::{conversation_chain, export};
use wealthdesk::auth::Role;

use crate::helpers::{TestApp, spawn_app_with};
use crate::on_both_stores;

/// A conversation with `n` client messages (and whatever the bot said back).
async fn conversation(app: &TestApp, client: &str, n: usize) -> String {
    let token = app.token(Role::Client, client);
    let id = app.start_conversation(&token).await;
    for i in 0..n {
        let (status, body) = app
            .call(
                Method::POST,
                &format!("/v1/conversations/{id}/messages"),
                Some(&token),
                Some(json!({"client_msg_id": format!("m{i}"), "kind": "text", "body": {"text": format!("第 {i} 个问题：保本吗？")}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    id
}

fn signer(app: &TestApp) -> Signer {
    let config = &app.state.config;
    Signer::load_or_create(&config.archive.key_path(&config.data_dir)).unwrap()
}

async fn exec(app: &TestApp, sql: &str, binds: &[&str]) {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for b in binds {
        query = query.bind(b.to_string());
    }
    let done = query.execute(app.db().pool()).await.unwrap();
    assert!(done.rows_affected() >= 1, "{sql} changed nothing");
}

fn named<'a>(problems: &'a [Problem], kind: &str, chain: &str) -> Vec<&'a Problem> {
    problems
        .iter()
        .filter(|p| p.problem == kind && p.chain == chain)
        .collect()
}

async fn every_kind_of_tampering_is_found_and_named(app: TestApp) {
    let edited = conversation(&app, "c-edit", 3).await;
    let deleted = conversation(&app, "c-delete", 3).await;
    let swapped = conversation(&app, "c-swap", 3).await;
    let forged = conversation(&app, "c-forge", 1).await;
    let untouched = conversation(&app, "c-fine", 2).await;
    // A compliance read is archived too.
    let officer = app.token(Role::Compliance, "officer-1");
    let (status, _) = app
        .get(&format!("/v1/conversations/{untouched}/messages"), &officer)
        .await;
    assert_eq!(status, StatusCode::OK);
    checkpoint::create(app.db(), &signer(&app)).await.unwrap();
    let clean = verify::run(app.db(), None, None).await.unwrap();
    assert!(clean.ok(), "{:?}", clean.problems);
    assert!(clean.records >= 12, "{}", clean.records);
    let access: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM archive_entries WHERE chain_id = 'access'")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert!(access >= 1, "the compliance read is in the archive");

    exec(
        &app,
        "UPDATE messages SET body = '{\"text\":\"保证收益\"}' WHERE conversation_id = $1 AND seq = 2",
        &[&edited],
    )
    .await;
    exec(
        &app,
        "DELETE FROM messages WHERE conversation_id = $1 AND seq = 3",
        &[&deleted],
    )
    .await;
    for (from, to) in [(1, -1), (2, 1), (-1, 2)] {
        exec(
            &app,
            &format!("UPDATE messages SET seq = {to} WHERE conversation_id = $1 AND seq = {from}"),
            &[&swapped],
        )
        .await;
    }
    exec(
        &app,
        "INSERT INTO turn_records (id, conversation_id, trigger_seq, kind, detail, created_at, state, \
         prompt_tokens, completion_tokens, cost_micros, total_ms) \
         VALUES ('forged-turn', $1, 1, 'answer', '{}', 1, 'advisory', 0, 0, 0, 0)",
        &[&forged],
    )
    .await;

    let report = verify::run(app.db(), None, None).await.unwrap();
    let p = &report.problems;
    let edit = named(p, "edited", &conversation_chain(&edited));
    assert_eq!(edit.len(), 1, "{p:?}");
    assert_eq!(edit[0].record, "message:2");
    let gone = named(p, "deleted", &conversation_chain(&deleted));
    assert_eq!(gone.len(), 1, "{p:?}");
    assert_eq!(gone[0].record, "message:3");
    let mut moved: Vec<&str> = named(p, "reordered", &conversation_chain(&swapped))
        .iter()
        .map(|p| p.record.as_str())
        .collect();
    moved.sort();
    assert_eq!(moved, ["message:1", "message:2"], "{p:?}");
    let inserted = named(p, "inserted", &conversation_chain(&forged));
    assert_eq!(inserted.len(), 1, "{p:?}");
    assert_eq!(inserted[0].record, "turn:forged-turn");
    assert_eq!(p.len(), 5, "nothing else is blamed: {p:?}");

    // One conversation's check sees only its own.
    let one = verify::run(app.db(), Some(&untouched), None).await.unwrap();
    assert!(one.ok(), "{:?}", one.problems);
    let one = verify::run(app.db(), Some(&edited), None).await.unwrap();
    assert_eq!(one.problems.len(), 1, "{:?}", one.problems);
}

async fn rewriting_the_archive_itself_is_found(app: TestApp) {
    let id = conversation(&app, "c-archive", 3).await;
    let chain = conversation_chain(&id);
    checkpoint::create(app.db(), &signer(&app)).await.unwrap();

    // An archive entry edited to match an edited message.
    exec(
        &app,
        "UPDATE messages SET body = '{\"text\":\"x\"}' WHERE conversation_id = $1 AND seq = 1",
        &[&id],
    )
    .await;
    // The forger writes the archived payload the edited row would have had.
    let row: MessageRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MESSAGE_SELECT} WHERE conversation_id = $1 AND seq = 1"
    )))
    .bind(&id)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    let forged = row.record().payload;
    exec(
        &app,
        "UPDATE archive_entries SET payload = $2 WHERE chain_id = $1 AND ref = 'message:1'",
        &[&chain, &forged],
    )
    .await;
    let report = verify::run(app.db(), None, None).await.unwrap();
    let altered = named(&report.problems, "entry_altered", &chain);
    assert_eq!(altered.len(), 1, "{:?}", report.problems);
    assert!(
        altered[0].record.starts_with("entry 1 "),
        "{:?}",
        altered[0]
    );

    // A forged signature.
    let signature: String = sqlx::query_scalar("SELECT signature FROM archive_checkpoints")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    let flipped = format!(
        "{}{}",
        if signature.starts_with('0') { "1" } else { "0" },
        &signature[1..]
    );
    exec(
        &app,
        "UPDATE archive_checkpoints SET signature = $1",
        &[&flipped],
    )
    .await;
    let report = verify::run(app.db(), None, None).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.problem == "signature_invalid"),
        "{:?}",
        report.problems
    );
}

/// Waits until nothing more is written to the conversation (the bot has answered).
async fn settled(app: &TestApp, id: &str) {
    let id = id.parse().unwrap();
    let mut last = -1;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = wealthdesk::im::store::last_seqs(app.db(), &[id])
            .await
            .unwrap()[0]
            .1;
        if now == last {
            return;
        }
        last = now;
    }
    panic!("conversation {id} kept changing");
}

async fn age(app: &TestApp, ids: &[&str]) {
    for id in ids {
        settled(app, id).await;
        exec(
            app,
            "UPDATE conversations SET updated_at = 0 WHERE id = $1",
            &[id],
        )
        .await;
    }
}

async fn count(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(bind.to_string())
        .fetch_one(app.db().pool())
        .await
        .unwrap()
}

async fn a_purge_removes_what_expired_but_never_what_is_held(app: TestApp) {
    let officer = app.token(Role::Compliance, "officer-hold");
    let old = conversation(&app, "c-old", 2).await;
    let held = conversation(&app, "c-held", 2).await;
    let recent = conversation(&app, "c-recent", 2).await;

    // Only compliance sets holds; bad requests change nothing.
    let path = "/v1/compliance/holds";
    for role in [Role::Client, Role::Advisor] {
        let token = app.token(role, "not-compliance");
        let response = app
            .call(
                Method::POST,
                path,
                Some(&token),
                Some(json!({"conversation_id": held, "reason": "x"})),
            )
            .await;
        crate::helpers::assert_error(response, StatusCode::FORBIDDEN, "role_not_allowed");
        crate::helpers::assert_error(
            app.get(path, &token).await,
            StatusCode::FORBIDDEN,
            "role_not_allowed",
        );
    }
    for (body, status, code) in [
        (
            json!({"conversation_id": held, "reason": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"conversation_id": held, "client_id": "c-held", "reason": "both"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"conversation_id": uuid::Uuid::now_v7().to_string(), "reason": "gone"}),
            StatusCode::NOT_FOUND,
            "conversation_not_found",
        ),
    ] {
        let response = app
            .call(Method::POST, path, Some(&officer), Some(body))
            .await;
        crate::helpers::assert_error(response, status, code);
    }
    let (status, hold) = app
        .call(
            Method::POST,
            path,
            Some(&officer),
            Some(
                json!({"conversation_id": held, "reason": "Case 2026-17: complaint under review"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let (_, list) = app.get(path, &officer).await;
    assert_eq!(list["holds"].as_array().unwrap().len(), 1, "{list}");

    checkpoint::create(app.db(), &signer(&app)).await.unwrap();
    age(&app, &[&old, &held]).await;
    let config = &app.state.config.archive;
    let now = wealthdesk::time_fmt::now_ms();
    let report = wealthdesk::archive::retention::purge(app.db(), config, now, false)
        .await
        .unwrap();
    assert_eq!(report.conversations, std::slice::from_ref(&old));
    assert_eq!(report.held, [format!("conversation:{held}")]);
    for (id, kept) in [(&old, 0), (&held, 2), (&recent, 2)] {
        let messages = count(
            &app,
            "SELECT COUNT(*) FROM messages WHERE conversation_id = $1",
            id,
        )
        .await;
        assert!(
            if kept == 0 {
                messages == 0
            } else {
                messages >= kept
            },
            "{id}: {messages}"
        );
    }
    let chain = conversation_chain(&old);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM archive_entries WHERE chain_id = $1",
            &chain
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM archive_entries WHERE chain_id = 'purges' AND ref = $1",
            &format!("purge:{chain}")
        )
        .await,
        1
    );
    let verified = verify::run(app.db(), None, None).await.unwrap();
    assert!(verified.ok(), "{:?}", verified.problems);
    assert_eq!(verified.purged, [chain]);

    // Lifted, the hold no longer keeps it; lifting twice is refused.
    let lift = format!("{path}/{}/lift", hold["id"].as_str().unwrap());
    let (status, lifted) = app
        .call(
            Method::POST,
            &lift,
            Some(&officer),
            Some(json!({"reason": "case closed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lifted}");
    let again = app
        .call(
            Method::POST,
            &lift,
            Some(&officer),
            Some(json!({"reason": "again"})),
        )
        .await;
    crate::helpers::assert_error(again, StatusCode::CONFLICT, "hold_lifted");
    let missing = app
        .call(
            Method::POST,
            &format!("{path}/nope/lift"),
            Some(&officer),
            Some(json!({"reason": "x"})),
        )
        .await;
    crate::helpers::assert_error(missing, StatusCode::NOT_FOUND, "hold_not_found");
    let report = wealthdesk::archive::retention::purge(app.db(), config, now, false)
        .await
        .unwrap();
    assert_eq!(report.conversations, std::slice::from_ref(&held));
    let verified = verify::run(app.db(), None, None).await.unwrap();
    assert!(verified.ok(), "{:?}", verified.problems);
    assert_eq!(verified.purged.len(), 2);
}

async fn messages_reach_the_archive_behind_their_commit_in_order(app: TestApp) {
    let id = conversation(&app, "c-behind", 3).await;
    settled(&app, &id).await;
    let chain = conversation_chain(&id);
    let messages = count(
        &app,
        "SELECT COUNT(*) FROM messages WHERE conversation_id = $1",
        &id,
    )
    .await;
    let entries = "SELECT COUNT(*) FROM archive_entries WHERE chain_id = $1 AND kind = 'message'";
    // Whatever the archiver has reached, verification blames nothing: the rest waits.
    let report = verify::run(app.db(), Some(&id), None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.pending as i64 + count(&app, entries, &chain).await,
        messages
    );

    wealthdesk::archive::backlog::archive_pending(app.db())
        .await
        .unwrap();
    let report = verify::run(app.db(), Some(&id), None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.pending, 0);
    assert_eq!(count(&app, entries, &chain).await, messages);
    // Archived once each, and a second run finds nothing left.
    let distinct = count(
        &app,
        "SELECT COUNT(DISTINCT ref) FROM archive_entries WHERE chain_id = $1 AND kind = 'message'",
        &chain,
    )
    .await;
    assert_eq!(distinct, messages);
    let again = wealthdesk::archive::backlog::archive_pending(app.db())
        .await
        .unwrap();
    assert_eq!(again, 0);

    // A chain keeps the conversation's order: messages by seq, and each bot turn after
    // the message that prompted it.
    let order: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, ref FROM archive_entries WHERE chain_id = $1 ORDER BY seq")
            .bind(&chain)
            .fetch_all(app.db().pool())
            .await
            .unwrap();
    let position = |reference: &str| order.iter().position(|(_, r)| r == reference);
    let seqs: Vec<i64> = order
        .iter()
        .filter_map(|(_, r)| r.strip_prefix("message:").and_then(|s| s.parse().ok()))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let turns: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, trigger_seq FROM turn_records WHERE conversation_id = $1")
            .bind(&id)
            .fetch_all(app.db().pool())
            .await
            .unwrap();
    assert!(!turns.is_empty(), "the bot answered");
    for (turn, trigger) in turns {
        let turn_at = position(&format!("turn:{turn}")).expect("every turn is archived");
        let message_at = position(&format!("message:{trigger}")).expect("its message too");
        assert!(message_at < turn_at, "{order:?}");
    }

    // Progress moved back makes the archiver append a message again: named as such.
    exec(
        &app,
        "UPDATE archive_progress SET archived_seq = archived_seq - 1 WHERE conversation_id = $1",
        &[&id],
    )
    .await;
    // (The service's own archiver may be the one to do it.)
    wealthdesk::archive::backlog::archive_pending(app.db())
        .await
        .unwrap();
    let report = verify::run(app.db(), Some(&id), None).await.unwrap();
    let repeated = named(&report.problems, "repeated", &chain);
    assert_eq!(repeated.len(), 1, "{:?}", report.problems);
    assert_eq!(repeated[0].record, format!("message:{messages}"));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

on_both_stores!(
    messages_reach_the_archive_behind_their_commit_in_order,
    every_kind_of_tampering_is_found_and_named,
    rewriting_the_archive_itself_is_found,
    a_purge_removes_what_expired_but_never_what_is_held,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_a_cut_or_edited_one_does_not() {
    let app = spawn_app_with(crate::helpers::Store::Sqlite, |_| {}).await;
    let id = conversation(&app, "c-export", 4).await;
    let signer = signer(&app);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let entries = export::write(app.db(), &signer, &[conversation_chain(&id)], &file)
        .await
        .unwrap();
    assert!(entries >= 4);
    let report = export::verify_file(&file, Some(&signer.public_key())).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, entries);

    // Pinned to another key: refused.
    let other = hex::encode([7u8; 32]);
    let report = export::verify_file(&file, Some(&other)).unwrap();
    assert_eq!(report.problems[0].problem, "signature_invalid");

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 3].join("\n")).unwrap();
    let report = export::verify_file(&cut, None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.problem == "export_truncated"),
        "{:?}",
        report.problems
    );

    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, text.replacen("保本", "保证", 1)).unwrap();
    let report = export::verify_file(&edited, None).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "entry_altered");
    assert!(report.problems[0].record.starts_with("entry "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_signs_checkpoints_on_its_own_while_records_arrive() {
    let app = spawn_app_with(crate::helpers::Store::Sqlite, |c| {
        c.archive.checkpoint_secs = 1;
    })
    .await;
    conversation(&app, "c-periodic", 2).await;
    let mut signed = None;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut conn = app.db().pool().acquire().await.unwrap();
        signed = checkpoint::latest(&mut conn).await.unwrap();
        if signed.is_some() {
            break;
        }
    }
    let signed = signed.expect("a checkpoint within 4 s");
    assert!(signed.records >= 2, "{signed:?}");
    assert!(signed.signature_valid(Some(&signer(&app).public_key())));
    let report = verify::run(app.db(), None, None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}
