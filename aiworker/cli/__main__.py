from aiworker.cli import main

main()
