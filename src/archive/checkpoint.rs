//! Checkpoints: a Merkle root over every chain head, signed with the archive's Ed25519
//! key. Lodged outside the system (exported), a checkpoint proves what the archive held
//! at its time; any later rewrite of a chain no longer reaches its root.

use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{Hash, parse_hash};
use crate::db::{Db, DbError};

/// The archive's signing key, kept in a file (hex of the 32-byte seed, mode 0600).
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

/// Shows the public key only: the seed never reaches a log.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field(
                "public_key",
                &hex::encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl Signer {
    /// Loads the key, creating it on first use.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Signer> {
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the archive key {}: {e}", path.display())
            })?;
            let seed = parse_hash(text.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the archive key {} is not 64 hex characters (a 32-byte Ed25519 seed)",
                    path.display()
                )
            })?;
            return Ok(Signer {
                key: SigningKey::from_bytes(&seed),
            });
        }
        let seed: [u8; 32] = rand::random();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, hex::encode(seed))
            .map_err(|e| anyhow::anyhow!("cannot write the archive key {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(Signer {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub id: i64,
    pub at: i64,
    pub chains: i64,
    pub records: i64,
    pub root: String,
    pub public_key: String,
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn signed_text(&self) -> String {
        format!(
            "wealthdesk-checkpoint-v1\n{}\n{}\n{}\n{}\n{}",
            self.id, self.at, self.chains, self.records, self.root
        )
    }

    /// Whether the signature is valid for the checkpoint's own key (and, when given,
    /// that key is `expected`).
    pub fn signature_valid(&self, expected: Option<&str>) -> bool {
        if expected.is_some_and(|k| !k.eq_ignore_ascii_case(&self.public_key)) {
            return false;
        }
        let (Some(key), Ok(signature)) =
            (parse_hash(&self.public_key), hex::decode(&self.signature))
        else {
            return false;
        };
        let (Ok(key), Ok(signature)) = (
            VerifyingKey::from_bytes(&key),
            Signature::from_slice(&signature),
        ) else {
            return false;
        };
        key.verify(self.signed_text().as_bytes(), &signature)
            .is_ok()
    }
}

pub fn leaf(chain: &str, length: i64, head: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chain.as_bytes());
    h.update([0u8]);
    h.update(length.to_be_bytes());
    h.update(head);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over `leaves` (in chain order).
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest([]).into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = up(&level);
    }
    level[0]
}

/// The next level of the tree: pairs hashed, an odd node moved up unchanged.
fn up(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node(l, r),
            [single] => *single,
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

/// One step from a leaf towards the root: the sibling and which side it is on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub side: Side,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

/// The path from leaf `index` to the root.
pub fn proof(leaves: &[Hash], mut index: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            steps.push(Step {
                side: if sibling < index {
                    Side::Left
                } else {
                    Side::Right
                },
                hash: hex::encode(level[sibling]),
            });
        }
        level = up(&level);
        index /= 2;
    }
    steps
}

/// The root a leaf reaches along `steps` (None when a step is not a hash).
pub fn climb(leaf: Hash, steps: &[Step]) -> Option<Hash> {
    steps.iter().try_fold(leaf, |at, step| {
        let sibling = parse_hash(&step.hash)?;
        Some(match step.side {
            Side::Left => node(&sibling, &at),
            Side::Right => node(&at, &sibling),
        })
    })
}

/// Every chain head now, in chain order.
pub async fn current_heads(db: &Db) -> Result<Vec<(String, i64, String)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT chain_id, length, head FROM archive_heads WHERE length > 0 ORDER BY chain_id",
    )
    .fetch_all(db.pool())
    .await?)
}

/// The heads a checkpoint signed, in chain order.
pub async fn heads_of(
    conn: &mut sqlx::AnyConnection,
    checkpoint: i64,
) -> Result<Vec<(String, i64, String)>, DbError> {
    heads_in::<sqlx::Any>(conn, checkpoint).await
}

/// [`heads_of`] on a native connection of either store.
pub async fn heads_in<DB>(
    conn: &mut DB::Connection,
    checkpoint: i64,
) -> Result<Vec<(String, i64, String)>, DbError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    (String, i64, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    Ok(sqlx::query_as(
        "SELECT chain_id, length, head FROM archive_checkpoint_heads WHERE checkpoint_id = $1 \
         ORDER BY chain_id",
    )
    .bind(checkpoint)
    .fetch_all(conn)
    .await?)
}

pub fn leaves(heads: &[(String, i64, String)]) -> Vec<Hash> {
    heads
        .iter()
        .map(|(chain, length, head)| leaf(chain, *length, &parse_hash(head).unwrap_or([0; 32])))
        .collect()
}

/// Archives the messages still waiting ([`super::backlog`]), then signs every chain
/// head and stores the checkpoint with the heads it covers.
pub async fn create(db: &Db, signer: &Signer) -> anyhow::Result<Checkpoint> {
    super::backlog::archive_pending(db).await?;
    sign(db, signer).await
}

/// Signs every chain head as it stands.
async fn sign(db: &Db, signer: &Signer) -> anyhow::Result<Checkpoint> {
    let mut tx = db.begin_write().await?;
    let heads: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT chain_id, length, head FROM archive_heads WHERE length > 0 ORDER BY chain_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let at = crate::time_fmt::now_ms();
    let root = hex::encode(root(&leaves(&heads)));
    let records: i64 = heads.iter().map(|h| h.1).sum();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO archive_checkpoints (at, chains, records, root, public_key, signature) \
         VALUES ($1, $2, $3, $4, $5, '') RETURNING id",
    )
    .bind(at)
    .bind(heads.len() as i64)
    .bind(records)
    .bind(&root)
    .bind(signer.public_key())
    .fetch_one(&mut *tx)
    .await?;
    let mut checkpoint = Checkpoint {
        id,
        at,
        chains: heads.len() as i64,
        records,
        root,
        public_key: signer.public_key(),
        signature: String::new(),
    };
    checkpoint.signature = hex::encode(
        signer
            .key
            .sign(checkpoint.signed_text().as_bytes())
            .to_bytes(),
    );
    sqlx::query("UPDATE archive_checkpoints SET signature = $2 WHERE id = $1")
        .bind(id)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await?;
    for chunk in heads.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO archive_checkpoint_heads (checkpoint_id, chain_id, length, head) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let p = i * 3;
            sql.push_str(&format!("($1, ${}, ${}, ${})", p + 2, p + 3, p + 4));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id);
        for (chain, length, head) in chunk {
            query = query.bind(chain).bind(*length).bind(head);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(checkpoint)
}

/// Signs a checkpoint every `period` (0: never) while anything was appended since the
/// newest one, until `stop`. Several nodes may each sign; every checkpoint is valid.
pub fn every(
    db: Db,
    signer: Signer,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let (db, signer) = (std::sync::Arc::new(db), std::sync::Arc::new(signer));
    super::periodically(period, stop, move || {
        let (db, signer) = (db.clone(), signer.clone());
        async move {
            if let Err(e) = checkpoint_if_changed(&db, &signer).await {
                tracing::warn!(error = %e, "cannot sign the archive checkpoint");
            }
        }
    });
}

async fn checkpoint_if_changed(db: &Db, signer: &Signer) -> anyhow::Result<()> {
    super::backlog::archive_pending(db).await?;
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(updated_at) FROM archive_heads")
        .fetch_one(db.pool())
        .await?;
    let signed = latest(&mut *db.pool().acquire().await?).await?;
    if newest.is_some_and(|n| signed.as_ref().is_none_or(|c| n >= c.at)) {
        let cp = sign(db, signer).await?;
        tracing::info!(
            checkpoint = cp.id,
            chains = cp.chains,
            records = cp.records,
            "archive checkpoint signed"
        );
    }
    Ok(())
}

/// The newest checkpoint, if any.
pub async fn latest(conn: &mut sqlx::AnyConnection) -> Result<Option<Checkpoint>, DbError> {
    latest_in::<sqlx::Any>(conn).await
}

/// [`latest`] on a native connection of either store.
pub async fn latest_in<DB>(conn: &mut DB::Connection) -> Result<Option<Checkpoint>, DbError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    (i64, i64, i64, i64, String, String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let row: Option<(i64, i64, i64, i64, String, String, String)> = sqlx::query_as(
        "SELECT id, at, chains, records, root, public_key, signature FROM archive_checkpoints \
         ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(
        |(id, at, chains, records, root, public_key, signature)| Checkpoint {
            id,
            at,
            chains,
            records,
            root,
            public_key,
            signature,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_climbs_to_the_root() {
        for n in 1..=9usize {
            let leaves: Vec<Hash> = (0..n)
                .map(|i| leaf(&format!("c{i}"), 1, &[i as u8; 32]))
                .collect();
            let top = root(&leaves);
            for (i, l) in leaves.iter().enumerate() {
                assert_eq!(
                    climb(*l, &proof(&leaves, i)),
                    Some(top),
                    "{n} leaves, leaf {i}"
                );
            }
            let forged = leaf("c0", 2, &[0; 32]);
            assert_ne!(climb(forged, &proof(&leaves, 0)), Some(top));
        }
    }

    #[test]
    fn a_signature_covers_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("key")).unwrap();
        let again = Signer::load_or_create(&dir.path().join("key")).unwrap();
        assert_eq!(signer.public_key(), again.public_key(), "the key is kept");
        let mut cp = Checkpoint {
            id: 3,
            at: 10,
            chains: 2,
            records: 7,
            root: hex::encode([7u8; 32]),
            public_key: signer.public_key(),
            signature: String::new(),
        };
        cp.signature = hex::encode(signer.key.sign(cp.signed_text().as_bytes()).to_bytes());
        assert!(cp.signature_valid(None));
        assert!(cp.signature_valid(Some(&signer.public_key())));
        assert!(!cp.signature_valid(Some(&hex::encode([1u8; 32]))));
        let mut altered = cp.clone();
        altered.records = 8;
        assert!(!altered.signature_valid(None));
    }
}
