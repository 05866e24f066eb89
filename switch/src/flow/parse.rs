//! ovs-ofctl flow syntax (being written).
