//! Codec round trips and refusals of garbage.

use bytes::Bytes;
use flotilla_kv::{Epoch, KvCommand, Region, RegionId};

#[test]
fn put_round_trips() {
    let command = KvCommand::Put {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
    };
    assert_eq!(KvCommand::decode(&command.encode()), Ok(command));
    let region = Region::whole(RegionId(1), Epoch::new(1, 1));
    assert_eq!(Region::decode(&region.encode()), Ok(region));
}
