"""SFTP servers other than OpenSSH's, for showing the uploader works with them too."""
