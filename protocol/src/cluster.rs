//! ClusterClient: routing-table cache and connection pool shared by producers, consumers and the
//! admin CLI. (Being written.)
