//! A CRI client that makes the calls kubelet makes for a pod (`k8s-cri`, CRI v1 over
//! gRPC on the runtime's unix socket): `RunPodSandbox`, `CreateContainer` and
//! `StartContainer`, `PodSandboxStatus` for the pod's address, `ExecSync` (what exec
//! probes use), `StopPodSandbox` and `RemovePodSandbox`. Blocking: each call runs on a
//! private single-threaded tokio runtime.

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListImagesRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// What a failed CRI call said.
fn status(call: &str) -> impl Fn(tonic::Status) -> io::Error + '_ {
    move |s| io::Error::other(format!("CRI {call}: {}: {}", s.code(), s.message()))
}

/// A connection to one runtime's CRI socket.
#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    logs: PathBuf,
}

/// A pod sandbox this client created, with the configuration its containers repeat.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The runtime's sandbox ID.
    pub id: String,
    /// What `RunPodSandbox` was given (kubelet passes it again to `CreateContainer`).
    pub config: PodSandboxConfig,
}

impl Cri {
    /// Connect to `socket`; container logs go under `logs`.
    ///
    /// # Errors
    /// The runtime cannot be built or the socket not reached.
    pub fn connect(socket: &Path, logs: &Path) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(
                // The URI is required by tonic and ignored: the connector dials the socket.
                Endpoint::from_static("http://[::]:0").connect_timeout(Duration::from_secs(5)).connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }),
                ),
            )
            .map_err(|e| io::Error::other(format!("connecting to {}: {e}", socket.display())))?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            logs: logs.to_path_buf(),
        })
    }

    /// Wait until the CRI service answers `ListPodSandbox`: containerd serves its socket
    /// before its CRI plugin has recovered its state, and refuses CRI calls meanwhile
    /// ("server is not initialized yet").
    ///
    /// # Errors
    /// Not within `within`: the last error.
    pub fn wait_ready(&mut self, within: Duration) -> io::Result<()> {
        let t0 = std::time::Instant::now();
        loop {
            match self.pod_ids() {
                Ok(_) => return Ok(()),
                Err(e) if t0.elapsed() > within => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The runtime's name and version (`Version`), e.g. "containerd 1.6.20~ds1".
    ///
    /// # Errors
    /// The call failed.
    pub fn version(&mut self) -> io::Result<String> {
        let v = self.rt.block_on(self.runtime.version(VersionRequest::default())).map_err(status("Version"))?;
        let v = v.into_inner();
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    /// The tags of the images the runtime holds (`ListImages`).
    ///
    /// # Errors
    /// The call failed.
    pub fn image_tags(&mut self) -> io::Result<Vec<String>> {
        let r =
            self.rt.block_on(self.images.list_images(ListImagesRequest::default())).map_err(status("ListImages"))?;
        Ok(r.into_inner().images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// `RunPodSandbox` for pod `name` in namespace `default`, on the pod network (as
    /// kubelet asks for a pod without `hostNetwork`).
    ///
    /// # Errors
    /// The call failed (a CNI ADD failure is reported here).
    pub fn run_pod(&mut self, name: &str) -> io::Result<Sandbox> {
        let pod_namespaces = NamespaceOption {
            network: NamespaceMode::Pod.into(),
            pid: NamespaceMode::Container.into(),
            ipc: NamespaceMode::Pod.into(),
            ..NamespaceOption::default()
        };
        let log_directory = self.logs.join(name);
        std::fs::create_dir_all(&log_directory)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-{}", std::process::id()),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: [("io.kubernetes.pod.name".to_owned(), name.to_owned())].into(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let r = self.rt.block_on(self.runtime.run_pod_sandbox(request)).map_err(status("RunPodSandbox"))?;
        Ok(Sandbox { id: r.into_inner().pod_sandbox_id, config })
    }

    /// `CreateContainer` + `StartContainer`: container `name` of `image` running
    /// `command` in `pod`; its ID.
    ///
    /// # Errors
    /// A call failed.
    pub fn start_container(&mut self, pod: &Sandbox, name: &str, image: &str, command: &[&str]) -> io::Result<String> {
        let namespaces = pod.config.linux.as_ref().and_then(|l| l.security_context.as_ref()?.namespace_options.clone());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into(), ..ImageSpec::default() }),
            command: command.iter().map(|&s| s.to_owned()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: namespaces,
                    ..LinuxContainerSecurityContext::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let r = self.rt.block_on(self.runtime.create_container(request)).map_err(status("CreateContainer"))?;
        let container_id = r.into_inner().container_id;
        let start = StartContainerRequest { container_id: container_id.clone() };
        self.rt.block_on(self.runtime.start_container(start)).map_err(status("StartContainer"))?;
        Ok(container_id)
    }

    /// The pod's address and whether it is ready (`PodSandboxStatus`).
    ///
    /// # Errors
    /// The call failed.
    pub fn pod_status(&mut self, pod: &Sandbox) -> io::Result<(String, bool)> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false };
        let r = self.rt.block_on(self.runtime.pod_sandbox_status(request)).map_err(status("PodSandboxStatus"))?;
        let s = r.into_inner().status.ok_or_else(|| io::Error::other("PodSandboxStatus: no status"))?;
        let ip = s.network.map(|n| n.ip).unwrap_or_default();
        Ok((ip, s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32))
    }

    /// The pod's network namespace file, from the runtime's verbose `PodSandboxStatus`
    /// (containerd: the OCI spec it gave the sandbox).
    ///
    /// # Errors
    /// The call failed or the status names no network namespace.
    pub fn netns_path(&mut self, pod: &Sandbox) -> io::Result<PathBuf> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true };
        let r = self.rt.block_on(self.runtime.pod_sandbox_status(request)).map_err(status("PodSandboxStatus"))?;
        let info: serde_json::Value =
            serde_json::from_str(r.into_inner().info.get("info").map_or("{}", String::as_str))?;
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other(format!("no network namespace in the sandbox's status: {info}")))
    }

    /// Run `cmd` in `container` to its end (`ExecSync`, at most `timeout`): exit code,
    /// stdout and stderr.
    ///
    /// # Errors
    /// The call failed (not the command: that is its exit code).
    pub fn exec(&mut self, container: &str, cmd: &[&str], timeout: Duration) -> io::Result<(i32, String, String)> {
        let request = ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|&s| s.to_owned()).collect(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        let r = self.rt.block_on(self.runtime.exec_sync(request)).map_err(status("ExecSync"))?.into_inner();
        Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).into(), String::from_utf8_lossy(&r.stderr).into()))
    }

    /// `StopPodSandbox` (its containers stop, CNI DEL runs) then `RemovePodSandbox`, as
    /// kubelet does when a pod is deleted.
    ///
    /// # Errors
    /// A call failed.
    pub fn remove_pod(&mut self, id: &str) -> io::Result<()> {
        let stop = StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt.block_on(self.runtime.stop_pod_sandbox(stop)).map_err(status("StopPodSandbox"))?;
        let remove = RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt.block_on(self.runtime.remove_pod_sandbox(remove)).map_err(status("RemovePodSandbox"))?;
        Ok(())
    }

    /// The IDs of every sandbox the runtime holds (`ListPodSandbox`).
    ///
    /// # Errors
    /// The call failed.
    pub fn pod_ids(&mut self) -> io::Result<Vec<String>> {
        let r = self
            .rt
            .block_on(self.runtime.list_pod_sandbox(ListPodSandboxRequest::default()))
            .map_err(status("ListPodSandbox"))?;
        Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}
