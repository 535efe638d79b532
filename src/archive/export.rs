//! Exports of conversations' chains as JSONL that can be checked offline against the
//! signed checkpoint they carry (`wealthdesk archive verify --export FILE`).
//!
//! Lines, in order: a `header`; for each chain its `entry` lines (seq 1 up to the
//! checkpoint's length) then its `proof` (the head, and the Merkle path from the head's
//! leaf to the checkpoint's root); the `checkpoint`; an `end` line with the counts, so a
//! truncated file is recognised. Rows are streamed to the file, never held in memory.

use std::io::BufRead;

use std::path::Path;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint, Signer, Step};
use super::verify::{Problem, Report};
use super::{Entry, Hash, entry_hash, parse_hash};
use crate::db::Db;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header {
        version: u32,
        exported_at: i64,
        chains: Vec<String>,
    },
    Entry(Entry),
    Proof {
        chain_id: String,
        length: i64,
        head: String,
        path: Vec<Step>,
    },
    Checkpoint(Checkpoint),
    End {
        chains: usize,
        entries: u64,
    },
}

/// Writes `chains` to `out`, first signing a fresh checkpoint that covers them.
pub async fn write(db: &Db, signer: &Signer, chains: &[String], out: &Path) -> anyhow::Result<u64> {
    let file = tokio::fs::File::create(out)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let mut w = tokio::io::BufWriter::new(file);
    let entries = write_to(db, signer, chains, &mut w).await?;
    w.flush().await?;
    Ok(entries)
}

async fn line<W: AsyncWrite + Unpin>(l: &Line, w: &mut W) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec(l)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    Ok(())
}

/// Writes `chains` to `w` as they are read (nothing is held but one row), after
/// signing a fresh checkpoint that covers them. Every chain must have entries.
pub async fn write_to<W: AsyncWrite + Unpin>(
    db: &Db,
    signer: &Signer,
    chains: &[String],
    w: &mut W,
) -> anyhow::Result<u64> {
    let cp = checkpoint::create(db, signer).await?;
    let heads = checkpoint::heads_of(&mut *db.pool().acquire().await?, cp.id).await?;
    let leaves = checkpoint::leaves(&heads);
    line(
        &Line::Header {
            version: 1,
            exported_at: cp.at,
            chains: chains.to_vec(),
        },
        w,
    )
    .await?;
    let mut entries = 0;
    for chain in chains {
        let Some(index) = heads.iter().position(|h| &h.0 == chain) else {
            anyhow::bail!("{chain} has nothing archived");
        };
        let (_, length, head) = &heads[index];
        let mut rows = sqlx::query_as::<_, (String, i64, String, String, i64, String, String)>(
            "SELECT chain_id, seq, kind, ref, at, payload, hash FROM archive_entries \
             WHERE chain_id = $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(chain)
        .bind(*length)
        .fetch(db.pool());
        while let Some((chain_id, seq, kind, reference, at, payload, hash)) =
            rows.try_next().await?
        {
            entries += 1;
            line(
                &Line::Entry(Entry {
                    chain_id,
                    seq,
                    kind,
                    reference,
                    at,
                    payload,
                    hash,
                }),
                w,
            )
            .await?;
        }
        line(
            &Line::Proof {
                chain_id: chain.clone(),
                length: *length,
                head: head.clone(),
                path: checkpoint::proof(&leaves, index),
            },
            w,
        )
        .await?;
    }
    line(&Line::Checkpoint(cp), w).await?;
    line(
        &Line::End {
            chains: chains.len(),
            entries,
        },
        w,
    )
    .await?;
    Ok(entries)
}

/// Checks an export file on its own: every chain recomputed, each head's path to the
/// checkpoint's root, the checkpoint's signature (by `public_key` when given), and the
/// end line's counts.
pub fn verify_file(path: &Path, public_key: Option<&str>) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut problems = Vec::new();
    let problem = |problem, chain: &str, record: String, detail: String| Problem {
        problem,
        chain: chain.to_string(),
        record,
        detail,
    };
    let (mut chain, mut prev, mut expected): (String, Hash, i64) = (String::new(), [0; 32], 1);
    let mut proofs: Vec<(String, i64, String, Vec<Step>)> = Vec::new();
    let mut last_hash: Option<String> = None;
    let mut checkpoint: Option<Checkpoint> = None;
    let mut end: Option<(usize, u64)> = None;
    let (mut records, mut header) = (0u64, false);
    for (n, text) in std::io::BufReader::new(file).lines().enumerate() {
        let text = text?;
        let at_line = format!("line {}", n + 1);
        let parsed: Line = match serde_json::from_str(&text) {
            Ok(l) => l,
            Err(e) => {
                problems.push(problem("export_malformed", "", at_line, e.to_string()));
                continue;
            }
        };
        if end.is_some() {
            problems.push(problem(
                "export_malformed",
                "",
                at_line,
                "text after the end line".into(),
            ));
            continue;
        }
        match parsed {
            Line::Header { .. } => header = true,
            Line::Entry(e) => {
                if e.chain_id != chain {
                    chain = e.chain_id.clone();
                    prev = [0; 32];
                    expected = 1;
                }
                records += 1;
                if e.seq != expected {
                    problems.push(problem(
                        "entry_missing",
                        &chain,
                        format!("entry {expected}"),
                        format!("the export skips from entry {expected} to {}", e.seq),
                    ));
                }
                let computed = entry_hash(
                    &prev,
                    &e.chain_id,
                    e.seq,
                    &e.kind,
                    &e.reference,
                    e.at,
                    &e.payload,
                );
                if hex::encode(computed) != e.hash {
                    problems.push(problem(
                        "entry_altered",
                        &chain,
                        format!("entry {} ({})", e.seq, e.reference),
                        "its hash does not match its contents and the entry before it".into(),
                    ));
                }
                prev = parse_hash(&e.hash).unwrap_or(computed);
                expected = e.seq + 1;
                last_hash = Some(e.hash);
            }
            Line::Proof {
                chain_id,
                length,
                head,
                path,
            } => {
                if chain_id != chain
                    || expected - 1 != length
                    || last_hash.as_deref() != Some(&head)
                {
                    problems.push(problem(
                        "head_mismatch",
                        &chain_id,
                        format!("entry {length}"),
                        format!(
                            "the proof names head entry {length}, the export's chain ends at entry {}",
                            expected - 1
                        ),
                    ));
                }
                proofs.push((chain_id, length, head, path));
                last_hash = None;
            }
            Line::Checkpoint(c) => checkpoint = Some(c),
            Line::End { chains, entries } => end = Some((chains, entries)),
        }
    }
    if !header {
        problems.push(problem(
            "export_malformed",
            "",
            "line 1".into(),
            "no header line".into(),
        ));
    }
    match end {
        None => problems.push(problem(
            "export_truncated",
            "",
            format!("after {records} entries"),
            "the file stops before its end line: it was cut short".into(),
        )),
        Some((chains, entries)) if chains != proofs.len() || entries != records => {
            problems.push(problem(
                "export_truncated",
                "",
                format!("{records} entries, {} chains", proofs.len()),
                format!("the end line counts {entries} entries in {chains} chains"),
            ))
        }
        Some(_) => {}
    }
    match &checkpoint {
        None => problems.push(problem(
            "export_truncated",
            "",
            "checkpoint".into(),
            "no checkpoint line".into(),
        )),
        Some(cp) => {
            if !cp.signature_valid(public_key) {
                problems.push(problem(
                    "signature_invalid",
                    "",
                    format!("checkpoint {}", cp.id),
                    "the checkpoint's signature does not verify".into(),
                ));
            }
            for (chain_id, length, head, path) in &proofs {
                let leaf =
                    checkpoint::leaf(chain_id, *length, &parse_hash(head).unwrap_or([0; 32]));
                if checkpoint::climb(leaf, path).map(hex::encode).as_deref()
                    != Some(cp.root.as_str())
                {
                    problems.push(problem(
                        "altered_after_checkpoint",
                        chain_id,
                        format!("entry {length}"),
                        format!("its head does not reach checkpoint {}'s signed root", cp.id),
                    ));
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        scope: format!("export {}", path.display()),
        chains: proofs.len(),
        records,
        live_rows: 0,
        pending: 0,
        checkpoint,
        purged: Vec::new(),
        problems,
        elapsed_ms: elapsed * 1000.0,
        records_per_sec: super::verify::rate(records, elapsed),
    })
}
