//! Masterless mesh: chitchat membership with a typed node summary and sealed transport.
