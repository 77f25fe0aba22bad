//! A small synchronous client of containerd's CRI gRPC service (runtime.v1), playing the
//! kubelet's part: pods with the `hull` runtime handler, their containers, exec, status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerStatus, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PortForwardRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    log_dir: PathBuf,
}

/// A pod as the test created it; its config is needed again for each container.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

/// What a test container runs and is limited to.
#[derive(Default)]
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub args: &'a [&'a str],
    pub memory_limit: Option<i64>,
    pub envs: &'a [(&'a str, &'a str)],
    /// The container's seccomp profile (the kubelet's `securityContext.seccompProfile`).
    pub seccomp: Option<SecurityProfile>,
    /// Capabilities added to (or dropped from) the runtime's default set.
    pub capabilities: Option<Capability>,
    /// `securityContext.privileged` (its pod must be privileged too).
    pub privileged: bool,
    /// Volumes, as the kubelet hands them over.
    pub mounts: &'a [k8s_cri::v1::Mount],
}

impl Cri {
    pub fn connect(socket: &Path, log_dir: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(Endpoint::try_from("http://localhost").unwrap().connect_with_connector(tower::service_fn(
                move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                },
            )))
            .expect("connecting to containerd's CRI socket");
        Cri { rt, client: RuntimeServiceClient::new(channel), log_dir: log_dir.to_path_buf() }
    }

    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut RuntimeServiceClient<Channel>) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let client = &mut self.client;
        self.rt.block_on(f(client)).map(|r| r.into_inner())
    }

    /// RunPodSandbox with the `hull` handler; `share_pid` puts the containers in one pid namespace.
    pub fn run_pod(&mut self, name: &str, share_pid: bool) -> Result<Pod, tonic::Status> {
        self.run_pod_with(name, "hull", share_pid)
    }

    /// RunPodSandbox with the runtime handler `handler` (`hull`, or `runc` to compare).
    pub fn run_pod_with(&mut self, name: &str, handler: &str, share_pid: bool) -> Result<Pod, tonic::Status> {
        self.run_pod_as(name, handler, share_pid, false)
    }

    /// RunPodSandbox, of a privileged pod if `privileged` (which privileged containers need).
    pub fn run_pod_as(
        &mut self,
        name: &str,
        handler: &str,
        share_pid: bool,
        privileged: bool,
    ) -> Result<Pod, tonic::Status> {
        let log_directory = self.log_dir.join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: if share_pid { NamespaceMode::Pod } else { NamespaceMode::Container } as i32,
                        ..Default::default()
                    }),
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let id = self.call(async move |c| c.run_pod_sandbox(request).await)?.pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// The pod's IP as CNI assigned it.
    pub fn pod_ip(&mut self, pod: &Pod) -> String {
        let request = PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false };
        let status = self.call(async move |c| c.pod_sandbox_status(request).await).unwrap();
        status.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default()
    }

    /// PortForward: the streaming URL through which `port` of the pod is reached.
    pub fn port_forward(&mut self, pod: &Pod, port: u16) -> String {
        let request = PortForwardRequest { pod_sandbox_id: pod.id.clone(), port: vec![port.into()] };
        self.call(async move |c| c.port_forward(request).await).expect("PortForward").url
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn start_container(&mut self, pod: &Pod, spec: ContainerSpec<'_>) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: spec.name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: spec.image.into(), ..Default::default() }),
            args: spec.args.iter().map(|a| a.to_string()).collect(),
            envs: spec
                .envs
                .iter()
                .map(|(k, v)| k8s_cri::v1::KeyValue { key: k.to_string(), value: v.to_string() })
                .collect(),
            log_path: format!("{}.log", spec.name),
            linux: Some(LinuxContainerConfig {
                resources: spec
                    .memory_limit
                    .map(|m| LinuxContainerResources { memory_limit_in_bytes: m, ..Default::default() }),
                // The kubelet gives each container the pod's namespace choices.
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: pod
                        .config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    seccomp: spec.seccomp,
                    capabilities: spec.capabilities,
                    privileged: spec.privileged,
                    ..Default::default()
                }),
            }),
            labels: HashMap::new(),
            mounts: spec.mounts.to_vec(),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self.call(async move |c| c.create_container(request).await)?.container_id;
        let request = StartContainerRequest { container_id: id.clone() };
        self.call(async move |c| c.start_container(request).await)?;
        Ok(id)
    }

    pub fn exec_sync(&mut self, container: &str, cmd: &[&str]) -> ExecSyncResponse {
        let request = ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|a| a.to_string()).collect(),
            timeout: 60,
        };
        self.call(async move |c| c.exec_sync(request).await).expect("ExecSync")
    }

    pub fn container_status(&mut self, container: &str) -> ContainerStatus {
        let request = k8s_cri::v1::ContainerStatusRequest { container_id: container.into(), verbose: false };
        self.call(async move |c| c.container_status(request).await).expect("ContainerStatus").status.expect("a status")
    }

    pub fn update_memory_limit(&mut self, container: &str, bytes: i64) -> Result<(), tonic::Status> {
        let request = k8s_cri::v1::UpdateContainerResourcesRequest {
            container_id: container.into(),
            linux: Some(LinuxContainerResources { memory_limit_in_bytes: bytes, ..Default::default() }),
            ..Default::default()
        };
        self.call(async move |c| c.update_container_resources(request).await).map(|_| ())
    }

    /// CRI's ContainerStats: `(memory working set bytes, cpu usage core-nanoseconds)`.
    pub fn container_stats(&mut self, container: &str) -> (u64, u64) {
        let request = k8s_cri::v1::ContainerStatsRequest { container_id: container.into() };
        let stats =
            self.call(async move |c| c.container_stats(request).await).expect("ContainerStats").stats.expect("stats");
        let memory = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
        let cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
        (memory, cpu)
    }

    pub fn stop_container(&mut self, container: &str) {
        let request = StopContainerRequest { container_id: container.into(), timeout: 5 };
        self.call(async move |c| c.stop_container(request).await).expect("StopContainer");
    }

    pub fn remove_container(&mut self, container: &str) {
        let request = RemoveContainerRequest { container_id: container.into() };
        self.call(async move |c| c.remove_container(request).await).expect("RemoveContainer");
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&mut self, pod: &Pod) {
        let request = StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call(async move |c| c.stop_pod_sandbox(request).await).expect("StopPodSandbox");
        let request = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call(async move |c| c.remove_pod_sandbox(request).await).expect("RemovePodSandbox");
    }
}
