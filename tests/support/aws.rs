//! moto's server (owned by the AWS work; placeholder).
pub struct Moto {}
impl Moto {
    pub fn start() -> Self {
        todo!()
    }
}
