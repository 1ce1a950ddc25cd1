//! The `riegel` command line.

/// jemalloc instead of glibc malloc: no global arena lock on the hot path,
/// and freed memory (argon2's 19 MiB per login) goes back to the OS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Return unused memory within about a second.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use riegel::admin::{self, AdminRequest, NewUserSpec};
use riegel::auth::password::{check_policy, Hasher};
use riegel::auth::OsRandom;
use riegel::clock::{Clock, SystemClock};
use riegel::config::{Config, StoreConfig};
use riegel::store::{SledStore, StoreError};

#[derive(Parser)]
#[command(name = "riegel", version, about = "Two-factor login in front of an existing web portal")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start riegel in front of a demo portal, with a demo user; no set-up needed.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Data directory (default: a new one under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A demo portal with its own login form, users and session cookie;
        /// riegel in portal login mode adds the second factor.
        #[arg(long)]
        portal_login: bool,
    },
    /// Check a configuration file; prints every problem and exits 2 if there are any.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage accounts (works while `riegel serve` is running).
    User {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Read a password from stdin and print its argon2id hash.
    HashPassword {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The store as a whole.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy everything (users with their ids, sessions, counters, tokens,
    /// the mail spool) from one configuration's store into another's empty
    /// one: sled to PostgreSQL or back. A sled source must not be in use.
    Copy {
        /// The configuration whose store is read.
        #[arg(long)]
        from: PathBuf,
        /// The configuration whose (empty) store is written.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is read from stdin (one line) unless --no-password.
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// No password: the user sets one through "Sie können nicht auf Ihr Konto zugreifen?".
        #[arg(long)]
        no_password: bool,
    },
    /// Import users from CSV: username,email,display_name[,password_hash] (argon2 or bcrypt).
    Import { file: PathBuf },
    List,
    Show { user: String },
    Disable { user: String },
    Enable { user: String },
    /// Set a password, read from stdin (one line).
    SetPassword { user: String },
    /// Set (or with an empty value, remove) the e-mail address.
    SetEmail { user: String, email: String },
    /// Remove the authenticator and recovery codes; the next login enrols again.
    ResetTotp { user: String },
    /// Lift a ban or lock after failed logins.
    Unban { user: String },
    Delete { user: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("riegel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to stderr: `level` (or `RIEGEL_LOG`, an `EnvFilter` directive
/// list) for riegel's own targets. Every other target (Pingora, sled,
/// rustls, tokio ...) is capped at `warn` whatever `RIEGEL_LOG` says: at
/// debug and trace Pingora logs request and answer heads and raw request
/// bytes, cookies and all, and secrets never reach a log.
fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let wanted = tracing_subscriber::EnvFilter::try_from_env("RIEGEL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let capped = filter_fn(|meta| {
        let t = meta.target();
        let own = t == "riegel" || t.starts_with("riegel::");
        own || *meta.level() <= tracing::Level::WARN
    });
    let filter = wanted.and(capped);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry();
    let _ = if json { registry.with(layer.json().with_filter(filter)).try_init() } else { registry.with(layer.with_filter(filter)).try_init() };
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}: configuration has errors:\n{e}", path.display()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::CheckConfig { config } => Ok(check_config(&config)),
        Cmd::Serve { config } => {
            let cfg = load_config(&config)?;
            init_logging(&cfg.log.level, cfg.log.json);
            for w in &cfg.warnings {
                tracing::warn!(warning = %w, "configuration");
            }
            serve(cfg, &config)
        }
        Cmd::Demo { listen, dir, portal_login: false } => demo(listen, dir),
        Cmd::Demo { listen, dir, portal_login: true } => demo_portal_login(listen, dir),
        Cmd::HashPassword { config } => {
            let params = match config {
                Some(c) => load_config(&c)?.password.argon2,
                None => riegel::config::Argon2Params { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 },
            };
            let pw = read_password("Password: ")?;
            let h = Hasher::new(&params)?.hash(&pw, &OsRandom)?;
            println!("{h}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Store { cmd: StoreCmd::Copy { from, to } } => {
            let (a, b) = (load_config(&from)?, load_config(&to)?);
            init_logging("warn", false);
            store_copy(&a, &b)
        }
        Cmd::User { config, cmd } => {
            let config = config.context("--config FILE is required")?;
            let cfg = load_config(&config)?;
            init_logging("warn", false);
            user(&cfg, cmd)
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Err(errs) => {
            eprintln!("{}: {} problem(s):", path.display(), errs.0.len());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(2)
        }
        Ok(cfg) => match riegel::app::load_pages(&cfg) {
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
            Ok(_) => {
                for w in &cfg.warnings {
                    eprintln!("  warning: {w}");
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
        },
    }
}

/// How long a stopping riegel keeps delivering mails already accepted.
const MAIL_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A small runtime for the command line's own async work (the store, the
/// mail spool); the gateway builds its own runtimes.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn serve(cfg: Config, path: &Path) -> Result<ExitCode> {
    let listen = cfg.listen;
    let upstream = cfg.upstream.clone();
    let app = riegel::app::build(cfg, Arc::new(SystemClock), None).context("cannot start")?;
    let live = app.live.clone();
    // SIGHUP (`systemctl reload`) reads the configuration again.
    let reloader = Arc::new(riegel::reload::Reloader::new(path.to_path_buf(), live.clone(), app.mailer.clone()));
    riegel::reload::on_sighup(reloader.clone()).context("cannot listen for SIGHUP")?;
    tracing::info!(%listen, upstream = %format!("{}:{}", upstream.host, upstream.port), "riegel is listening");
    riegel::proxy::run_live(live, None)?;
    if let Some(mailer) = &reloader.mailer() {
        // What is still in the spool goes out at the next start.
        if !runtime()?.block_on(mailer.drain(MAIL_DRAIN)) {
            tracing::info!("stopping with mails still in the spool; they are sent at the next start");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `riegel demo --portal-login`: the login portal, riegel in portal login
/// mode in front; the portal's user is the one to log in with.
fn demo_portal_login(listen: SocketAddr, dir: Option<PathBuf>) -> Result<ExitCode> {
    init_logging("info", false);
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("riegel-demo-{}-{}", std::process::id(), SystemClock.now())));
    if dir.join("riegel.yaml").exists() {
        bail!("{} already holds a demo; pass another --dir", dir.display());
    }
    let portal = riegel::demo::start_login_portal("127.0.0.1:0".parse()?).context("demo portal")?;
    let files = riegel::demo::write_portal_demo_config(&dir, listen, portal.addr)?;
    let cfg = load_config(&files.config)?;
    let (user, password, _) = riegel::demo::PORTAL_USER;
    println!();
    println!("  riegel demo (portal login mode) is running.");
    println!("  The portal behind riegel has its own login form, users and session cookie;");
    println!("  riegel replays your login to it and adds the second factor.");
    println!();
    println!("  Open:       http://{listen}/");
    println!("  Username:   {user}   (the portal's own account)");
    println!("  Password:   {password}");
    println!("  Data and config: {}", files.dir.display());
    // The binary as it was started (`cargo run` does not put it on the PATH).
    let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "riegel".into());
    println!("  Admin:      {me} user list --config {}", files.config.display());
    println!("              (after your first login, `user disable {user}` there ends the portal's session too)");
    println!();
    println!("  You need an authenticator app (or: oathtool --totp -b KEY). Ctrl-C stops.");
    println!();
    std::io::stdout().flush()?;
    serve(cfg, &files.config)
}

fn demo(listen: SocketAddr, dir: Option<PathBuf>) -> Result<ExitCode> {
    init_logging("info", false);
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("riegel-demo-{}-{}", std::process::id(), SystemClock.now())),
    };
    if dir.join("riegel.yaml").exists() {
        bail!("{} already holds a demo; pass another --dir", dir.display());
    }
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse()?).context("demo portal")?;
    let files = riegel::demo::write_demo_config(&dir, listen, portal)?;
    let cfg = load_config(&files.config)?;
    // The demo user, created through the same code as `riegel user add`.
    let password = riegel::auth::crypto::random_token::<9>(&OsRandom);
    let hash = Hasher::new(&cfg.password.argon2)?.hash(&password, &OsRandom)?;
    {
        let store = SledStore::open(cfg.store.sled_path().context("the demo runs on sled")?)?;
        let audit = riegel::audit::Audit::open(cfg.log.audit_file.as_deref()).context("log.audit_file")?;
        let r = runtime()?.block_on(admin::execute(
            &store,
            &SystemClock,
            &audit,
            "cli",
            &admin::NothingElse,
            AdminRequest::Add {
                user: NewUserSpec {
                    username: "demo".into(),
                    email: Some("demo@example.invalid".into()),
                    display_name: "Demo Mieterin".into(),
                    password_hash: Some(hash),
                },
            },
        ));
        if !r.ok {
            bail!("demo user: {}", r.message);
        }
    }
    println!();
    println!("  riegel demo is running.");
    println!();
    println!("  Open:       http://{listen}/");
    println!("  Username:   demo   (or demo@example.invalid)");
    println!("  Password:   {password}");
    println!("  Mail goes to the outbox folder: {}", files.outbox.display());
    println!("  Data and config: {}", files.dir.display());
    // The binary as it was started (`cargo run` does not put it on the PATH).
    let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "riegel".into());
    println!("  Admin:      {me} user list --config {}", files.config.display());
    println!("  Your account page after logging in: http://{listen}/_riegel/account");
    println!();
    println!("  You need an authenticator app (or: oathtool --totp -b KEY). Ctrl-C stops.");
    println!();
    std::io::stdout().flush()?;
    serve(cfg, &files.config)
}

/// One line from stdin, without its line ending; a prompt on a terminal.
fn read_password(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw).to_string();
    if pw.is_empty() {
        bail!("no password on stdin");
    }
    Ok(pw)
}

fn user(cfg: &Config, cmd: UserCmd) -> Result<ExitCode> {
    if cfg.portal_login.is_some() {
        // The portal checks the passwords; one riegel held would never be
        // asked for.
        match &cmd {
            UserCmd::SetPassword { .. } => bail!("first_factor: portal: the portal owns the passwords, riegel holds none to set"),
            UserCmd::Add { no_password: false, .. } => {
                bail!("first_factor: portal: the portal owns the passwords; add the account with --no-password (for its e-mail and name), or let the first portal login create it")
            }
            _ => {}
        }
    }
    let hasher = Hasher::new(&cfg.password.argon2)?;
    let new_password = |username: &str, email: Option<&str>| -> Result<String> {
        let pw = read_password("New password: ")?;
        if let Err(e) = check_policy(&pw, &pw, cfg.password.min_length, username, email) {
            bail!("password refused: {e:?} (at least {} characters, not the username or e-mail)", cfg.password.min_length);
        }
        Ok(hasher.hash(&pw, &OsRandom)?)
    };
    let req = match cmd {
        UserCmd::Add { username, email, name, no_password } => {
            let password_hash = if no_password { None } else { Some(new_password(&username, email.as_deref())?) };
            AdminRequest::Add {
                user: NewUserSpec { display_name: name.unwrap_or_else(|| username.clone()), username, email, password_hash },
            }
        }
        UserCmd::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            match admin::parse_csv(&text) {
                Ok(users) => {
                    // In portal login mode, as for add and set-password above.
                    let hashed = users.iter().find(|u| u.password_hash.is_some());
                    if let (Some(_), Some(u)) = (&cfg.portal_login, hashed) {
                        bail!("first_factor: portal: the portal owns the passwords; {} has a password_hash: leave that column empty", u.username);
                    }
                    AdminRequest::Import { users }
                }
                Err(errs) => {
                    eprintln!("{}: nothing imported, {} problem(s):", file.display(), errs.len());
                    for e in errs {
                        eprintln!("  {e}");
                    }
                    return Ok(ExitCode::from(2));
                }
            }
        }
        UserCmd::List => AdminRequest::List,
        UserCmd::Show { user } => AdminRequest::Show { user },
        UserCmd::Disable { user } => AdminRequest::Disable { user },
        UserCmd::Enable { user } => AdminRequest::Enable { user },
        UserCmd::SetPassword { user } => AdminRequest::SetPassword { password_hash: new_password(&user, None)?, user },
        UserCmd::SetEmail { user, email } => AdminRequest::SetEmail { user, email: Some(email) },
        UserCmd::ResetTotp { user } => AdminRequest::ResetTotp { user },
        UserCmd::Unban { user } => AdminRequest::Unban { user },
        UserCmd::Delete { user } => AdminRequest::Delete { user },
    };
    // The command's own audit line, when it opens the store itself (a
    // running server writes it for the commands it executes).
    let audit = || riegel::audit::Audit::open(cfg.log.audit_file.as_deref()).context("log.audit_file");
    // In portal login mode the portal's sessions of the sessions a command
    // ends end too: through the server (the admin socket) or, when the
    // command opens the store itself, through a portal client of its own.
    let ends = || riegel::app::command_session_ends(&Arc::new(cfg.clone()));
    let resp = match &cfg.store {
        StoreConfig::Sled { path, admin_socket } => match SledStore::open(path) {
            Ok(store) => runtime()?.block_on(admin::execute(&store, &SystemClock, &audit()?, "cli", &*ends(), req)),
            Err(StoreError::Locked { .. }) => admin::send(admin_socket, &req)
                .with_context(|| format!("the store is in use; could not reach the running server at {}", admin_socket.display()))?,
            Err(e) => return Err(e.into()),
        },
        // Straight to the database, also while instances run: its changes
        // reach their session caches through NOTIFY.
        StoreConfig::Postgres(_) => {
            let store = riegel::app::open_backend(cfg).context("cannot open the store")?;
            runtime()?.block_on(admin::execute(&*store, &SystemClock, &audit()?, "cli", &*ends(), req))
        }
    };
    if resp.ok {
        if !resp.message.is_empty() {
            println!("{}", resp.message);
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("riegel: {}", resp.message);
        Ok(ExitCode::FAILURE)
    }
}

/// `riegel store copy`: everything from `from`'s store into `to`'s, which
/// must be empty.
fn store_copy(from: &Config, to: &Config) -> Result<ExitCode> {
    if from.secrets.storage_key != to.secrets.storage_key {
        bail!("the two configurations have different storage keys; the copied authenticator secrets and mails could not be opened (use the same storage_key_file)");
    }
    let same = match (&from.store, &to.store) {
        (StoreConfig::Sled { path: a, .. }, StoreConfig::Sled { path: b, .. }) => {
            a == b || a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a))
        }
        (StoreConfig::Postgres(a), StoreConfig::Postgres(b)) => a.url == b.url,
        _ => false,
    };
    if same {
        bail!("--from and --to name the same store");
    }
    let source = match riegel::app::open_backend(from) {
        Err(StoreError::Locked { path }) => bail!("the store at {path} is in use: stop `riegel serve` before copying from sled"),
        r => r.context("cannot open the source store")?,
    };
    let target = riegel::app::open_backend(to).context("cannot open the target store")?;
    let rt = runtime()?;
    if !rt.block_on(target.is_empty())? {
        bail!("the target store is not empty; riegel copies only into an empty store");
    }
    let snap = rt.block_on(source.export()).context("cannot read the source store")?;
    rt.block_on(target.import(&snap)).context("cannot write the target store")?;
    rt.block_on(target.flush())?;
    println!(
        "copied {} users, {} sessions, {} counters, {} tokens, {} queued mails from {} to {}",
        snap.users.len(),
        snap.sessions.len(),
        snap.counters.len(),
        snap.tokens.len(),
        snap.mails.len(),
        source.kind(),
        target.kind()
    );
    Ok(ExitCode::SUCCESS)
}
