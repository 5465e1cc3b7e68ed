"""What a team's service imports: request signing and verification."""
