//! One conformance suite for every storage backend: the local directory, Garage, and Garage
//! behind the fault proxy. Whatever the backend, callers see the same behaviour.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tresor_vault::backend::{Backend, BackendError, Created};

/// The suite: every backend must pass all of it.
pub async fn suite(be: &dyn Backend) {
    be.check_location().await.expect("location reachable");

    // create-once
    assert_eq!(be.create("data/ab/one", Bytes::from_static(b"first")).await.unwrap(), Created::New);
    assert_eq!(be.create("data/ab/one", Bytes::from_static(b"second")).await.unwrap(), Created::Existed);
    assert_eq!(&be.get("data/ab/one").await.unwrap()[..], b"first", "create must not replace");

    // reads
    assert_eq!(&be.get_range("data/ab/one", 1..4).await.unwrap()[..], b"irs");
    assert!(be.get_range("data/ab/one", 3..10).await.is_err(), "a range past the end is an error, not a short read");
    assert!(matches!(be.get("data/ab/missing").await, Err(BackendError::NotFound(_))));
    assert_eq!(be.size("data/ab/one").await.unwrap(), Some(5));
    assert_eq!(be.size("data/ab/missing").await.unwrap(), None);

    // empty and large objects
    be.create("index/empty", Bytes::new()).await.unwrap();
    assert_eq!(be.get("index/empty").await.unwrap().len(), 0);
    // larger than the S3 backend's multipart threshold in the suite's configuration
    let big: Bytes = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    be.create("data/cd/big", big.clone()).await.unwrap();
    assert_eq!(be.get("data/cd/big").await.unwrap(), big);
    assert_eq!(&be.get_range("data/cd/big", 10_000_000..10_000_100).await.unwrap()[..], &big[10_000_000..10_000_100]);

    // overwrite (session markers only)
    be.overwrite("sessions/s1", Bytes::from_static(b"v1")).await.unwrap();
    be.overwrite("sessions/s1", Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(&be.get("sessions/s1").await.unwrap()[..], b"v2");

    // listing: sorted, complete past 1,000 objects, prefix-exact
    let creates =
        (0..1100).map(|i| async move { be.create(&format!("snapshots/{i:05}"), Bytes::from(vec![1u8; i % 7])).await });
    let made: Vec<Created> = futures::stream::iter(creates).buffer_unordered(16).try_collect().await.unwrap();
    assert!(made.iter().all(|c| *c == Created::New));
    let listed = be.list("snapshots/").await.unwrap();
    assert_eq!(listed.len(), 1100, "listing must not stop at a page boundary");
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "listing is sorted");
    assert_eq!(listed[13].size, 13 % 7);
    let data = be.list("data/").await.unwrap();
    assert_eq!(data.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), vec!["data/ab/one", "data/cd/big"]);
    assert!(be.list("nothing-here/").await.unwrap().is_empty());

    // delete: idempotent
    be.delete("data/ab/one").await.unwrap();
    be.delete("data/ab/one").await.unwrap();
    assert_eq!(be.size("data/ab/one").await.unwrap(), None);

    // keys that could escape the root are refused
    assert!(be.create("../escape", Bytes::new()).await.is_err());
}
