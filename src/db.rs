//! The relational store: SQLite (embedded default) or PostgreSQL behind one pool.
//! Every place where the two need different SQL or setup lives in this file.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::config::{Config, DatabaseTarget, redact_url_password};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} migration(s) not applied yet")]
    PendingMigrations(usize),
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    #[error(transparent)]
    Shared(std::sync::Arc<DbError>),
}

/// Rows per multi-row INSERT statement: SQLite takes at most 32,766 values in one.
pub const ROWS_PER_INSERT: usize = 1000;

/// Writes the bind-parameter markers of SQL built at run time, in the order the values
/// are bound: `$1, $2, …` on PostgreSQL; a bare `?` on SQLite, where a numbered or named
/// marker is looked up by a linear search of the statement's markers, at prepare time
/// and again at bind time, which makes a statement of a few hundred rows cost
/// quadratically more than its rows.
#[derive(Debug)]
pub struct Markers {
    numbered: bool,
    count: usize,
}

impl Markers {
    pub fn new(backend: Backend) -> Markers {
        Markers {
            numbered: backend == Backend::Postgres,
            count: 0,
        }
    }

    /// For a connection of the engine-neutral pool.
    pub fn for_connection(conn: &sqlx::AnyConnection) -> Markers {
        Markers::new(match conn.backend_name() {
            "PostgreSQL" => Backend::Postgres,
            _ => Backend::Sqlite,
        })
    }

    /// The next value's marker.
    pub fn push(&mut self, sql: &mut String) {
        self.count += 1;
        if self.numbered {
            use std::fmt::Write as _;
            let _ = write!(sql, "${}", self.count);
        } else {
            sql.push('?');
        }
    }

    /// `count` markers separated by commas.
    pub fn push_list(&mut self, sql: &mut String, count: usize) {
        for i in 0..count {
            if i > 0 {
                sql.push_str(", ");
            }
            self.push(sql);
        }
    }

    /// `rows` parenthesised lists of `width` markers, separated by commas (a VALUES list).
    pub fn push_rows(&mut self, sql: &mut String, rows: usize, width: usize) {
        for i in 0..rows {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            self.push_list(sql, width);
            sql.push(')');
        }
    }
}

/// Every SQLite connection's settings. WAL lets readers run beside the writer; FULL
/// makes every acknowledged commit survive power loss, not only a crash.
const SQLITE_SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

/// How long a write waits for its turn on SQLite's one writing connection: transactions
/// are short, so a wait this long means one is stuck, and the write fails naming the
/// pool's timeout rather than hanging.
const WRITER_WAIT: Duration = Duration::from_secs(60);

/// The writing connection's own: a page cache (64 MiB) that holds the working set of
/// the tables and indexes a busy node writes, not SQLite's default 2 MiB.
const SQLITE_WRITER_SETUP: &str = "PRAGMA cache_size = -65536;";

/// A pool plus the knowledge of which engine is behind it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// On PostgreSQL, a small native pool for the hot write path: bulk statements
    /// with array parameters (one prepared statement whatever the batch size), which
    /// the engine-neutral pool cannot bind.
    postgres: Option<sqlx::PgPool>,
    /// On SQLite, a small native pool for long reads (archive verification), opened on
    /// first use: rows decode without the engine-neutral pool's per-value conversion.
    sqlite: Option<sqlx::SqlitePool>,
    /// On SQLite, the one connection every write of this process goes through. Writers
    /// queue for it rather than in SQLite's busy handler, which sleeps in growing steps
    /// (milliseconds each) while the one write lock is taken; and since nothing else of
    /// ours writes, its page cache stays valid from one transaction to the next, where a
    /// connection taken from the shared pool would find the database changed by another
    /// and read every page it touches again.
    writer: Option<AnyPool>,
}

/// A write transaction ([`Db::begin_write`]): use `&mut *tx` as the executor.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl Db {
    /// Opens the configured database (creating the SQLite file and its directory when
    /// needed). Fails within `database.acquire_timeout_secs` when it cannot be reached.
    pub async fn connect(config: &Config) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let target = config.database_target();
        let (url, backend, shown) = match &target {
            DatabaseTarget::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Backend::Sqlite,
                    path.display().to_string(),
                )
            }
            DatabaseTarget::Postgres(url) => {
                (url.clone(), Backend::Postgres, redact_url_password(url))
            }
        };
        let connect_err = |source| DbError::Connect {
            target: shown.clone(),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let timeout = Duration::from_secs(config.database.acquire_timeout_secs);
        let pool = AnyPoolOptions::new()
            .max_connections(config.database.max_connections)
            .acquire_timeout(timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_SETUP).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone());
        let pool = tokio::time::timeout(timeout, pool)
            .await
            .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
            .map_err(connect_err)?;
        let writer = (backend == Backend::Sqlite).then(|| {
            AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(WRITER_WAIT)
                // Kept open: its page cache is what it is for.
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(SQLITE_SETUP).await?;
                        conn.execute(SQLITE_WRITER_SETUP).await?;
                        Ok(())
                    })
                })
                .connect_lazy_with(options)
        });
        let sqlite = match &target {
            DatabaseTarget::Sqlite(path) => Some(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(
                        sqlx::sqlite::SqliteConnectOptions::new()
                            .filename(path)
                            .busy_timeout(Duration::from_secs(5))
                            // Long scans hand rows over in larger batches, and are
                            // expected to take more than a second.
                            .row_buffer_size(1024)
                            .disable_statement_logging(),
                    ),
            ),
            DatabaseTarget::Postgres(_) => None,
        };
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect(&url)
                    .await
                    .map_err(connect_err)?,
            ),
        };
        Ok(Db {
            pool,
            backend,
            postgres,
            sqlite,
            writer,
        })
    }

    /// The native PostgreSQL pool, when running on PostgreSQL.
    pub fn postgres(&self) -> Option<&sqlx::PgPool> {
        self.postgres.as_ref()
    }

    /// The native SQLite pool, when running on SQLite.
    pub fn sqlite(&self) -> Option<&sqlx::SqlitePool> {
        self.sqlite.as_ref()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies every migration not yet applied. Safe to run on every start.
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Ready means: the database answers and every migration this build knows is applied.
    pub async fn check_ready(&self) -> Result<(), DbError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        let pending = self
            .migrator()
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        if pending > 0 {
            return Err(DbError::PendingMigrations(pending));
        }
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it waits its turn for the
    /// process's one writing connection, then takes the write lock up front (`BEGIN
    /// IMMEDIATE`) so a reader never has to upgrade and fail with "busy".
    pub async fn begin_write(&self) -> Result<WriteTx, DbError> {
        let tx = match &self.writer {
            Some(writer) => writer.begin_with("BEGIN IMMEDIATE").await?,
            None => self.pool.begin().await?,
        };
        Ok(WriteTx { tx })
    }

    /// Runs one writing statement. On SQLite it goes through the process's one writing
    /// connection ([`Db::begin_write`]), so it never sleeps in SQLite's busy handler
    /// behind the other writers.
    pub async fn write<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult, DbError> {
        Ok(query
            .execute(self.writer.as_ref().unwrap_or(&self.pool))
            .await?)
    }

    /// Connections open and idle, for the metrics endpoint.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(pg) = &self.postgres {
            pg.close().await;
        }
        if let Some(sqlite) = &self.sqlite {
            sqlite.close().await;
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }
}

/// Long reads straight off a SQLite connection's own handle, inside whatever transaction
/// it holds: sqlx's driver copies every value and hands each row from its worker thread
/// to the caller, which dominates a scan of a whole archive.
pub mod sqlite_scan {
    use std::ffi::{CStr, CString, c_int};

    use libsqlite3_sys as ffi;

    /// The row a [`scan`] stands on; what it lends lives until the next row.
    pub struct Row {
        statement: *mut ffi::sqlite3_stmt,
    }

    impl Row {
        pub fn int(&self, column: c_int) -> i64 {
            // SAFETY: `statement` is a live statement positioned on a row (see `scan`).
            unsafe { ffi::sqlite3_column_int64(self.statement, column) }
        }

        /// The column as text; None when it is NULL.
        pub fn text(&self, column: c_int) -> Result<Option<&str>, sqlx::Error> {
            // SAFETY: `statement` is a live statement positioned on a row. The text
            // stays valid until the statement steps or this column is converted to
            // another encoding; `scan` steps only after the borrow of `self` ends, and
            // nothing here asks for another encoding.
            let bytes = unsafe {
                if ffi::sqlite3_column_type(self.statement, column) == ffi::SQLITE_NULL {
                    return Ok(None);
                }
                let text = ffi::sqlite3_column_text(self.statement, column);
                let len = ffi::sqlite3_column_bytes(self.statement, column);
                if text.is_null() || len <= 0 {
                    return Ok(Some(""));
                }
                std::slice::from_raw_parts(text, len as usize)
            };
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }

        /// The column as text, which must not be NULL.
        pub fn required_text(&self, column: c_int) -> Result<&str, sqlx::Error> {
            self.text(column)?
                .ok_or_else(|| sqlx::Error::Decode(format!("column {column} is NULL").into()))
        }
    }

    /// A prepared statement, finalized when dropped.
    struct Statement(*mut ffi::sqlite3_stmt);

    impl Drop for Statement {
        fn drop(&mut self) {
            // SAFETY: the statement was prepared by `scan` and is finalized once.
            unsafe {
                ffi::sqlite3_finalize(self.0);
            }
        }
    }

    fn failure(db: *mut ffi::sqlite3, code: c_int) -> sqlx::Error {
        // SAFETY: `db` is the open connection the failing call ran on.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) };
        sqlx::Error::Protocol(format!(
            "SQLite error {code}: {}",
            message.to_string_lossy()
        ))
    }

    /// Runs `sql` with text parameters `params` on the connection, inside the
    /// transaction it has open, handing every row to `each` in turn.
    pub async fn scan<E: From<sqlx::Error>>(
        conn: &mut sqlx::SqliteConnection,
        sql: &str,
        params: &[&str],
        each: impl FnMut(&Row) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        scan_locked(db, sql, params, each)
    }

    fn scan_locked<E: From<sqlx::Error>>(
        db: *mut ffi::sqlite3,
        sql: &str,
        params: &[&str],
        mut each: impl FnMut(&Row) -> Result<(), E>,
    ) -> Result<(), E> {
        let sql = CString::new(sql).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `db` is the connection's open handle, locked for us while this runs.
        let code = unsafe {
            ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut raw, std::ptr::null_mut())
        };
        if code != ffi::SQLITE_OK {
            return Err(failure(db, code).into());
        }
        let statement = Statement(raw);
        for (i, param) in params.iter().enumerate() {
            // SAFETY: SQLITE_TRANSIENT makes SQLite copy the text before returning.
            let code = unsafe {
                ffi::sqlite3_bind_text(
                    statement.0,
                    i as c_int + 1,
                    param.as_ptr().cast(),
                    param.len() as c_int,
                    ffi::SQLITE_TRANSIENT(),
                )
            };
            if code != ffi::SQLITE_OK {
                return Err(failure(db, code).into());
            }
        }
        loop {
            // SAFETY: a prepared statement of this connection; no row borrow is alive.
            match unsafe { ffi::sqlite3_step(statement.0) } {
                ffi::SQLITE_ROW => each(&Row {
                    statement: statement.0,
                })?,
                ffi::SQLITE_DONE => return Ok(()),
                code => return Err(failure(db, code).into()),
            }
        }
    }
}
