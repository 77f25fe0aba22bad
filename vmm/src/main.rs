//! `hull-vmm`: run one microVM. Configure by flags or by `--config <file.json>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::config::VmmConfig;
use hull_vmm::vcpu::ExitReason;

#[derive(Parser, Debug)]
#[command(name = "hull-vmm", version, about = "hull's KVM microVM monitor")]
struct Args {
    /// JSON configuration (the flags below are ignored when given).
    #[arg(long)]
    config: Option<PathBuf>,
    /// vmlinux (64-bit ELF) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Serial console output file (standard output when absent).
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Log filter for hull-vmm's own diagnostics (stderr), e.g. `info`, `debug`.
    #[arg(long, default_value = "warn", env = "HULL_VMM_LOG")]
    log_level: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<VmmConfig> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
            return serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()));
        }
        let Some(kernel) = self.kernel else {
            anyhow::bail!("--kernel (or --config) is required");
        };
        Ok(VmmConfig {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            console_log: self.console_log,
            vsock: None,
            fs: None,
            net: Vec::new(),
            jail: None,
        })
    }
}

fn run(args: Args) -> anyhow::Result<ExitReason> {
    let config = args.into_config()?;
    let signals = hull_vmm::run::take_signals()?;
    let mut vmm = builder::create(&config)?;
    builder::load(&mut vmm, &config)?;
    Ok(vmm.run(signals, None, None)?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .init();
    match run(args) {
        Ok(ExitReason::Reset) | Ok(ExitReason::Signal) => ExitCode::SUCCESS,
        Ok(ExitReason::VcpuError) => {
            eprintln!("hull-vmm: the VM stopped on a vCPU error (see the log above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
