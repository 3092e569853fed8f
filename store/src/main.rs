//! `berth-store`: the image store's command line (`berth-runtime image ...` runs it).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_store::store::{LockKind, Options, Store, DEFAULT_ROOT};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-store", version, about = "Berth's container image store")]
struct Cli {
    /// The store's directory.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Space kept free on the store's filesystem, in MiB (the larger of this and
    /// --min-free-percent wins).
    #[arg(long, global = true, default_value_t = 512)]
    min_free_mib: u64,
    #[arg(long, global = true, default_value_t = 5)]
    min_free_percent: u64,
    /// Registries: mirrors, insecure (plain HTTP) ones, credentials, extra CAs.
    #[arg(long, global = true, default_value = berth_store::registry::CONFIG_PATH)]
    registries: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image from a registry (`nginx` is docker.io/library/nginx:latest).
    Pull { reference: String },
    /// Import an OCI image layout directory or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Store it under this reference (required when the source does not name it).
        name: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Remove images (by reference, or by ID: every reference to it).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show an image's record, manifest and config.
    Inspect { name: String },
    /// Remove layers and blobs no image or container uses.
    Gc,
    /// Space used by the store.
    Df,
    /// A container's writable root filesystem from an image (what the daemon uses).
    Rootfs {
        #[command(subcommand)]
        cmd: RootfsCmd,
    },
}

#[derive(Subcommand)]
enum RootfsCmd {
    /// Make one; prints its path.
    Create { image: String, id: String },
    /// Remove one.
    Rm { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-store: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pull progress: on a terminal one line redrawn in place (a bar over all layers'
/// bytes), retries and warnings on lines of their own; elsewhere only those.
struct ProgressLine {
    tty: bool,
    state: std::sync::Mutex<(u64, Vec<u64>, usize)>,
}

impl ProgressLine {
    fn new(tty: bool) -> Self {
        ProgressLine {
            tty,
            state: std::sync::Mutex::new((0, Vec::new(), 0)),
        }
    }

    fn show(&self, p: &berth_store::pull::Progress) {
        use berth_store::pull::Progress;
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match p {
            Progress::Resolved {
                reference,
                layers,
                bytes,
            } => {
                *st = (*bytes, vec![0; *layers], 0);
                if self.tty {
                    eprintln!("pulling {reference}: {layers} layers, {}", human(*bytes));
                }
            }
            Progress::Downloaded { layer, bytes, .. } => {
                if let Some(b) = st.1.get_mut(*layer) {
                    *b = *bytes;
                }
            }
            Progress::Stored { .. } => st.2 += 1,
            Progress::Retrying {
                digest, at, error, ..
            } => {
                eprintln!("\r\x1b[Klayer {digest}: {error}; resuming at byte {at}");
            }
            Progress::Message(m) => {
                if m.starts_with("warning") {
                    eprintln!("\r\x1b[K{m}");
                } else if m.ends_with(" stored") {
                    st.2 += 1;
                }
            }
        }
        if self.tty {
            let (total, per, stored) = &*st;
            let got: u64 = per.iter().sum();
            let width = 30u64;
            let filled = if *total == 0 {
                width
            } else {
                (got.min(*total) * width / total).min(width)
            };
            let bar: String = (0..width)
                .map(|i| if i < filled { '#' } else { '.' })
                .collect();
            eprint!(
                "\r\x1b[K[{bar}] {} / {}, {stored}/{} layers stored",
                human(got),
                human(*total),
                per.len()
            );
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let options = Options {
        min_free_bytes: cli.min_free_mib << 20,
        min_free_percent: cli.min_free_percent,
        ..Options::default()
    };
    let store = Store::open(&cli.root, options)?;
    // Adding runs beside other additions; removing waits for them (see store.rs).
    let _lock = match &cli.cmd {
        Cmd::Pull { .. } | Cmd::Import { .. } | Cmd::Rootfs { .. } => {
            Some(store.lock(LockKind::Shared)?)
        }
        Cmd::Rm { .. } | Cmd::Gc => Some(store.lock(LockKind::Exclusive)?),
        Cmd::Ls | Cmd::Inspect { .. } | Cmd::Df => None,
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |msg: &str| {
        if tty || msg.starts_with("warning") {
            eprintln!("{msg}");
        }
    };
    match &cli.cmd {
        Cmd::Pull { reference } => {
            let r = berth_store::reference::Reference::parse(reference)?;
            let config = berth_store::registry::Config::load(&cli.registries)?;
            let client = berth_store::registry::Client::new(config)?;
            let bar = ProgressLine::new(tty && !cli.json);
            let rec = berth_store::pull::pull(&store, &client, &r, &|p| bar.show(&p))?;
            bar.finish();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                println!("{} {}", rec.reference, rec.id);
            }
        }
        Cmd::Import { path, name } => {
            let images = if path.is_dir() {
                berth_store::import::oci_layout(&store, path, name.as_deref(), &mut progress)?
            } else {
                berth_store::import::docker_archive(&store, path, name.as_deref(), &mut progress)?
            };
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                for i in images {
                    println!("{} {}", i.reference, i.id);
                }
            }
        }
        Cmd::Ls => {
            let images = store.images()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                println!("{:<50} {:<14} {:>10}", "REFERENCE", "IMAGE ID", "SIZE");
                for i in images {
                    println!(
                        "{:<50} {:<14} {:>10}",
                        i.reference,
                        &i.id.hex()[..12],
                        human(i.size)
                    );
                }
            }
        }
        Cmd::Rm { names } => {
            for n in names {
                for r in store.remove(n)? {
                    println!("Untagged: {r}");
                }
            }
        }
        Cmd::Inspect { name } => {
            let rec = store.find(name)?;
            let manifest: serde_json::Value = serde_json::from_slice(&store.blob(&rec.manifest)?)?;
            let config: serde_json::Value = serde_json::from_slice(&store.blob(&rec.id)?)?;
            let out = serde_json::json!({"image": rec, "manifest": manifest, "config": config});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Gc => {
            let r = store.gc()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "removed {} layers and {} blobs, {} freed",
                    r.layers_removed,
                    r.blobs_removed,
                    human(r.bytes_freed)
                );
            }
        }
        Cmd::Df => {
            let u = store.usage()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&u)?);
            } else {
                println!(
                    "{} images, {} layers ({}), {} container root filesystems; backend {:?}; filesystem {} free of {}",
                    u.images,
                    u.layers,
                    human(u.layer_bytes),
                    u.containers,
                    u.backend,
                    human(u.fs_free),
                    human(u.fs_size)
                );
            }
        }
        Cmd::Rootfs { cmd } => match cmd {
            RootfsCmd::Create { image, id } => {
                println!("{}", store.create_rootfs(image, id)?.display());
            }
            RootfsCmd::Rm { id } => store.remove_rootfs(id)?,
        },
    }
    Ok(())
}
