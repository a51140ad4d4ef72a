"""The only package that imports paramiko: connections, host keys, SFTP access."""
