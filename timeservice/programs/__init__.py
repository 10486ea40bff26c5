"""The four command lines: the demo, the server, the client and the skew
check. Each main(argv) is one function that tests call directly."""
