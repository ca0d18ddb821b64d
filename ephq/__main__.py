from ephq.cli.main import run

run()
