"""Everything that touches a replica, behind one Endpoint interface."""
