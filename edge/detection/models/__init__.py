"""Shipped detector weights (see NOTICE.txt); a package so the wheel carries them."""
