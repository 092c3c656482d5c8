from cotmod.cli import main

main()
