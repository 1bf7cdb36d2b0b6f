"""The benchmarks behind `shmbroker bench`, each side by side with the IPC a user would otherwise pick."""
