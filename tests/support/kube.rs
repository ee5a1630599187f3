//! etcd + kube-apiserver (owned by the k8s-stack work; placeholder).
pub struct KubeStack {}
impl KubeStack {
    pub fn start() -> Self {
        todo!()
    }
}
